"""CrossGuard rules for model-stack, as plain validators tests can call with realistic resource properties.

Validators see Kubernetes objects as Pulumi registers them: `args.resource_type` is the type token
(`kubernetes:apps/v1:Deployment`, `kubernetes:serving.knative.dev/v1:Service`) and `args.props` the camelCase
inputs. Objects applied through `kubernetes:yaml/v2:ConfigGroup` reach the engine as child resources of their
own type, so per-object rules cover them too. This module depends on pulumi-policy only: the CLI runs the pack
in its own virtualenv, without the project installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# --- reading Kubernetes objects ------------------------------------------------------------------------------

# (API group, kind) -> where the pod spec sits in the object.
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("core", "Pod"): ("spec",),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
    ("serving.knative.dev", "Service"): ("spec", "template", "spec"),
}
# Workloads that keep serving: they need warm replicas and a disruption budget in production.
REPLICATED_KINDS = {("apps", "Deployment"), ("apps", "StatefulSet"), ("serving.knative.dev", "Service")}
KNATIVE_MIN_SCALE = "autoscaling.knative.dev/min-scale"


def group_and_kind(resource_type: str) -> Optional[tuple[str, str]]:
    """`kubernetes:apps/v1:Deployment` -> ("apps", "Deployment"); None for anything that is not a Kubernetes object."""
    package, _, rest = resource_type.partition(":")
    module, _, kind = rest.partition(":")
    if package != "kubernetes" or not kind:
        return None
    return module.rsplit("/", 1)[0], kind


def type_token(api_version: str, kind: str) -> str:
    """The Pulumi type token of an object: `v1`/`ConfigMap` -> `kubernetes:core/v1:ConfigMap`."""
    return f"kubernetes:{api_version if '/' in api_version else 'core/' + api_version}:{kind}"


def _get(value: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    path = POD_SPEC_PATHS.get(group_and_kind(resource_type) or ("", ""))
    spec = _get(props, *path) if path else None
    return spec if isinstance(spec, Mapping) else None


def containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(`containers`/`initContainers`, container) for every container of a pod spec."""
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            yield field, container


def describe(resource_type: str, props: Mapping[str, Any], fallback_name: str) -> str:
    kind = (group_and_kind(resource_type) or ("", resource_type))[1]
    namespace = _get(props, "metadata", "namespace")
    name = _get(props, "metadata", "name") or fallback_name
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


def _container_label(field: str, container: Mapping[str, Any]) -> str:
    return f"{'init container' if field == 'initContainers' else 'container'} '{container.get('name')}'"


def _setting(args: ResourceValidationArgs | StackValidationArgs, schema: PolicyConfigSchema, key: str) -> Any:
    """A policy's config value, or the default its schema declares (the engine may not fill defaults in)."""
    value = args.get_config().get(key)
    return schema.properties[key]["default"] if value is None else value


# --- image references ----------------------------------------------------------------------------------------

FLOATING_TAGS = frozenset({"latest", "main", "master", "nightly", "edge", "stable", "dev"})


@dataclass(frozen=True)
class Image:
    repository: str
    """Fully qualified, as the container runtime resolves it (`docker.io/library/nginx`)."""
    tag: Optional[str]
    digest: Optional[str]

    @classmethod
    def parse(cls, reference: str) -> "Image":
        name, _, digest = reference.partition("@")
        last_slash = name.rfind("/")
        tag = None
        if name.rfind(":") > last_slash:
            name, tag = name.rsplit(":", 1)
        first, _, rest = name.partition("/")
        if not rest:
            name = f"docker.io/library/{name}"
        elif not ("." in first or ":" in first or first == "localhost"):
            name = f"docker.io/{name}"
        return cls(repository=name, tag=tag, digest=digest or None)

    @property
    def floating(self) -> bool:
        return self.digest is None and (self.tag is None or self.tag in FLOATING_TAGS)


def _images(args: ResourceValidationArgs) -> Iterator[tuple[str, str]]:
    spec = pod_spec(args.resource_type, args.props)
    for field, container in containers(spec or {}):
        if isinstance(container.get("image"), str):
            yield _container_label(field, container), container["image"]


IMAGE_TAG_SCHEMA = PolicyConfigSchema(
    properties={
        "requireDigest": {
            "type": "boolean",
            "default": False,
            "description": "Require every image to be pinned by digest (name@sha256:...), not only a fixed tag.",
        }
    }
)


def validate_image_tags(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    require_digest = _setting(args, IMAGE_TAG_SCHEMA, "requireDigest")
    for container, reference in _images(args):
        image = Image.parse(reference)
        if image.floating or (require_digest and image.digest is None):
            wanted = "a digest (name@sha256:<digest>)" if require_digest else "a fixed version tag or a digest"
            report_violation(
                f"{describe(args.resource_type, args.props, args.name)}: {container} uses image '{reference}', "
                f"which can change under the same reference; pin it to {wanted}."
            )


REGISTRY_SCHEMA = PolicyConfigSchema(
    properties={
        "allowedRegistries": {
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "description": "Registry hosts or host/path prefixes images may come from (`docker.io` for Docker "
            "Hub); empty allows any registry.",
        }
    }
)


def _allowed(repository: str, prefixes: list[str]) -> bool:
    return any(repository == prefix.rstrip("/") or repository.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def validate_registries(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    allowed = _setting(args, REGISTRY_SCHEMA, "allowedRegistries")
    if not allowed:
        return
    for container, reference in _images(args):
        repository = Image.parse(reference).repository
        if not _allowed(repository, allowed):
            report_violation(
                f"{describe(args.resource_type, args.props, args.name)}: {container} pulls '{reference}' "
                f"({repository}), which is outside the allowed registries {', '.join(allowed)}; mirror it there."
            )


# --- resources and probes ------------------------------------------------------------------------------------

RESOURCES_SCHEMA = PolicyConfigSchema(
    properties={
        "requests": {
            "type": "array",
            "items": {"type": "string"},
            "default": ["cpu", "memory"],
            "description": "Resources every container must request (what the scheduler places pods by).",
        },
        "limits": {
            "type": "array",
            "items": {"type": "string"},
            "default": ["memory"],
            "description": "Resources every container must limit. CPU is not limited by default: CPU limits "
            "throttle latency-sensitive servers, while a memory limit bounds what one pod can take from a node.",
        },
    }
)


def validate_resources(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    for field, container in containers(spec or {}):
        resources = container.get("resources") or {}
        missing = [
            f"{kind}.{name}"
            for kind in ("requests", "limits")
            for name in _setting(args, RESOURCES_SCHEMA, kind)
            if name not in (resources.get(kind) or {})
        ]
        if missing:
            report_violation(
                f"{describe(args.resource_type, args.props, args.name)}: {_container_label(field, container)} "
                f"sets no resources.{', resources.'.join(missing)}."
            )


PROBES_SCHEMA = PolicyConfigSchema(
    properties={
        "probes": {
            "type": "array",
            "items": {"enum": ["readinessProbe", "livenessProbe", "startupProbe"]},
            "default": ["readinessProbe", "livenessProbe"],
            "description": "Probes every serving container must define.",
        }
    }
)


def _serves(group_kind: Optional[tuple[str, str]], container: Mapping[str, Any]) -> bool:
    # Knative routes to its one user container whether or not it declares a port.
    return group_kind == ("serving.knative.dev", "Service") or bool(container.get("ports"))


def validate_probes(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    group_kind = group_and_kind(args.resource_type)
    for field, container in containers(spec or {}):
        if field != "containers" or not _serves(group_kind, container):
            continue
        missing = [probe for probe in _setting(args, PROBES_SCHEMA, "probes") if not container.get(probe)]
        if missing:
            report_violation(
                f"{describe(args.resource_type, args.props, args.name)}: serving container "
                f"'{container.get('name')}' has no {' or '.join(missing)}; without them traffic reaches a server "
                "that is still loading its model, and a hung server is never restarted."
            )


# --- pod security (the Kubernetes "restricted" Pod Security Standard) -----------------------------------------

RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})


def pod_security_problems(spec: Mapping[str, Any]) -> Iterator[str]:
    """What keeps a pod spec from meeting the `restricted` Pod Security Standard (kubernetes.io/docs/concepts/
    security/pod-security-standards)."""
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"sets {field}"
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            yield f"volume '{volume.get('name')}' is of type {', '.join(sorted(kinds - RESTRICTED_VOLUME_TYPES))}"
    pod = spec.get("securityContext") or {}
    for field, container in containers(spec):
        label = _container_label(field, container)
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            yield f"{label} is privileged"
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{label} does not set securityContext.allowPrivilegeEscalation: false"
        if not context.get("runAsNonRoot", pod.get("runAsNonRoot")):
            yield f"{label} does not set runAsNonRoot: true (pod or container securityContext)"
        if context.get("runAsUser", pod.get("runAsUser")) == 0:
            yield f"{label} runs as user 0"
        seccomp = _get(context, "seccompProfile", "type") or _get(pod, "seccompProfile", "type")
        if seccomp not in ALLOWED_SECCOMP:
            yield f"{label} has no seccompProfile RuntimeDefault or Localhost (pod or container securityContext)"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"{label} does not drop ALL capabilities"
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            yield f"{label} adds capabilities {', '.join(sorted(added))}"
        if any(port.get("hostPort") for port in container.get("ports") or []):
            yield f"{label} uses a hostPort"


def validate_pod_security(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    problems = list(pod_security_problems(spec))
    if problems:
        report_violation(
            f"{describe(args.resource_type, args.props, args.name)} is not 'restricted': " + "; ".join(problems) + "."
        )


# --- secrets out of ConfigMaps and plain env -----------------------------------------------------------------

_SECRET_WORDS = frozenset({"password", "passwd", "secret", "token", "apikey", "credential", "credentials"})
_SECRET_WORD_PAIRS = frozenset({("api", "key"), ("api", "keys"), ("private", "key"), ("access", "key")})
CREDENTIAL_PATTERNS = {
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "an OpenAI-style API key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
}


# `HF_TOKEN_PATH=/var/run/secrets/hf/token` points at a mounted Secret, which is the right way to pass one.
_REFERENCE_WORDS = frozenset({"path", "file", "dir", "name", "ref"})


def names_a_secret(key: str) -> bool:
    """`HF_TOKEN`, `apiKey`, `db.password` name secrets; `TOKENIZERS_PARALLELISM`, `MAX_TOKENS` and
    `PASSWORD_FILE` do not."""
    words = [word.lower() for word in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", key)]
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    return bool(_SECRET_WORDS & set(words)) or any(pair in _SECRET_WORD_PAIRS for pair in zip(words, words[1:]))


# A switch or a number is no credential, whatever its name (`ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID=false`).
_PLAIN_SETTING = re.compile(r"(?i)true|false|yes|no|on|off|enabled|disabled|[0-9]+(\.[0-9]+)?")


def holds_a_named_secret(name: str, value: Any) -> bool:
    """A value under a credential's name that could be one (not empty, not a switch or a number)."""
    return names_a_secret(name) and bool(value) and not (isinstance(value, str) and _PLAIN_SETTING.fullmatch(value))


def credential_in(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return None
    return next((what for what, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(value)), None)


def validate_no_plain_secrets(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    where = describe(args.resource_type, args.props, args.name)
    if group_and_kind(args.resource_type) == ("core", "ConfigMap"):
        for section in ("data", "binaryData"):
            for key, value in (args.props.get(section) or {}).items():
                found = "a key named like a credential" if holds_a_named_secret(key, value) else credential_in(value)
                if found:
                    report_violation(f"{where}: {section}.{key} holds {found}; put it in a Secret.")
    spec = pod_spec(args.resource_type, args.props)
    for field, container in containers(spec or {}):
        for variable in container.get("env") or []:
            name, value = variable.get("name", ""), variable.get("value")
            if value is None:
                continue  # valueFrom: a secretKeyRef is exactly what we want
            found = credential_in(value) or ("a credential" if holds_a_named_secret(name, value) else None)
            if found:
                report_violation(
                    f"{where}: {_container_label(field, container)} sets env {name} to {found} in plain text; "
                    "use valueFrom.secretKeyRef."
                )


# --- model caches --------------------------------------------------------------------------------------------

# What model-stack's ModelRunner puts on a claim it retains on delete (the pack runs without the components).
RETAINED_ANNOTATION = "model-stack.dev/retained"

MODEL_CACHE_SCHEMA = PolicyConfigSchema(
    properties={
        "namePattern": {
            "type": "string",
            "default": "model|cache|hf-home|huggingface",
            "description": "A PersistentVolumeClaim whose name matches this regular expression holds a model "
            "cache (hours of downloads) and must outlive the stack: created with the `protect` resource option, or "
            "retained on delete and annotated `model-stack.dev/retained: \"true\"` (policies cannot see "
            "`retainOnDelete` itself).",
        }
    }
)


def validate_model_cache_protected(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if group_and_kind(args.resource_type) != ("core", "PersistentVolumeClaim"):
        return
    name = _get(args.props, "metadata", "name") or args.name
    retained = _get(args.props, "metadata", "annotations", RETAINED_ANNOTATION) == "true"
    if re.search(_setting(args, MODEL_CACHE_SCHEMA, "namePattern"), name) and not (args.opts.protect or retained):
        report_violation(
            f"{describe(args.resource_type, args.props, args.name)} holds a model cache but is not kept; create it "
            f"with `pulumi.ResourceOptions(retain_on_delete=True)` and the annotation `{RETAINED_ANNOTATION}: "
            '"true"` (or `protect=True`) so a replace or destroy cannot wipe it.'
        )


# --- availability (stack-wide: they relate several resources) --------------------------------------------------

_EXEMPT_NAMESPACES = {
    "type": "array",
    "items": {"type": "string"},
    "default": ["kube-system"],
    "description": "Namespaces whose workloads are exempt (control planes that scale themselves).",
}
REPLICAS_SCHEMA = PolicyConfigSchema(
    properties={
        "minReplicas": {
            "type": "integer",
            "minimum": 1,
            "default": 2,
            "description": "Fewest warm replicas a serving workload may run (replicas, an HPA's minReplicas, or "
            "Knative's min-scale).",
        },
        "exemptNamespaces": _EXEMPT_NAMESPACES,
    }
)
DISRUPTION_BUDGET_SCHEMA = PolicyConfigSchema(properties={"exemptNamespaces": _EXEMPT_NAMESPACES})


@dataclass(frozen=True)
class Workload:
    description: str
    urn: str
    namespace: str
    name: str
    pod_labels: Mapping[str, str]
    min_replicas: int


def workloads(resources: list[Any]) -> Iterator[Workload]:
    """The replicated workloads of a stack, with the fewest replicas each can scale down to."""
    hpa_minimums = {
        (_get(r.props, "metadata", "namespace") or "", _get(r.props, "spec", "scaleTargetRef", "name")):
            _get(r.props, "spec", "minReplicas") or 1
        for r in resources
        if (group_and_kind(r.resource_type) or ("", ""))[1] == "HorizontalPodAutoscaler"
    }
    for resource in resources:
        group_kind = group_and_kind(resource.resource_type)
        if group_kind not in REPLICATED_KINDS:
            continue
        props = resource.props
        namespace = _get(props, "metadata", "namespace") or ""
        name = _get(props, "metadata", "name") or resource.name
        template_labels = dict(_get(props, "spec", "template", "metadata", "labels") or {})
        if group_kind == ("serving.knative.dev", "Service"):
            annotations = _get(props, "spec", "template", "metadata", "annotations") or {}
            minimum = int(annotations.get(KNATIVE_MIN_SCALE, 0))
            template_labels["serving.knative.dev/service"] = name
        else:
            replicas = _get(props, "spec", "replicas")
            minimum = hpa_minimums.get((namespace, name), 1 if replicas is None else replicas)
        yield Workload(describe(resource.resource_type, props, resource.name), resource.urn, namespace, name,
                       template_labels, minimum)


def validate_min_replicas(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    minimum = _setting(args, REPLICAS_SCHEMA, "minReplicas")
    exempt = set(_setting(args, REPLICAS_SCHEMA, "exemptNamespaces"))
    for workload in workloads(args.resources):
        if workload.namespace not in exempt and workload.min_replicas < minimum:
            report_violation(
                f"{workload.description} can run {workload.min_replicas} replica(s); serving needs at least "
                f"{minimum} warm so one node or rollout never takes it down.",
                workload.urn,
            )


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Label selector semantics (matchLabels and matchExpressions). An empty selector counts as no match: a
    budget over every pod in the namespace says nothing about this workload."""
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in expressions:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        satisfied = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(operator, False)
        if not satisfied:
            return False
    return True


def validate_disruption_budgets(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    exempt = set(_setting(args, DISRUPTION_BUDGET_SCHEMA, "exemptNamespaces"))
    budgets = [
        (_get(r.props, "metadata", "namespace") or "", _get(r.props, "spec", "selector") or {})
        for r in args.resources
        if group_and_kind(r.resource_type) == ("policy", "PodDisruptionBudget")
    ]
    for workload in workloads(args.resources):
        if workload.namespace in exempt or workload.min_replicas < 2:
            continue
        if not any(ns == workload.namespace and selector_matches(sel, workload.pod_labels) for ns, sel in budgets):
            report_violation(
                f"{workload.description} runs {workload.min_replicas}+ replicas but no PodDisruptionBudget in its "
                "namespace selects its pods, so a node drain can evict all of them at once.",
                workload.urn,
            )


# --- the pack ------------------------------------------------------------------------------------------------

POLICIES = [
    ResourceValidationPolicy(
        name="no-floating-image-tags",
        description="Images are pinned: a fixed version tag or a digest, never latest/main/no tag.",
        validate=validate_image_tags,
        config_schema=IMAGE_TAG_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="allowed-image-registries",
        description="Images come only from the allowed registries.",
        validate=validate_registries,
        config_schema=REGISTRY_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="container-resources",
        description="Every container sets resource requests and limits.",
        validate=validate_resources,
        config_schema=RESOURCES_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="serving-probes",
        description="Serving containers define readiness and liveness probes.",
        validate=validate_probes,
        config_schema=PROBES_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="restricted-pod-security",
        description="Pods meet the Kubernetes 'restricted' Pod Security Standard.",
        validate=validate_pod_security,
    ),
    ResourceValidationPolicy(
        name="no-plain-secrets",
        description="Credentials are never in ConfigMaps or plain container env.",
        validate=validate_no_plain_secrets,
    ),
    ResourceValidationPolicy(
        name="protected-model-cache",
        description="PersistentVolumeClaims holding model caches outlive the stack (retained or protected).",
        validate=validate_model_cache_protected,
        config_schema=MODEL_CACHE_SCHEMA,
    ),
    StackValidationPolicy(
        name="min-replicas",
        description="Serving workloads keep enough warm replicas.",
        validate=validate_min_replicas,
        config_schema=REPLICAS_SCHEMA,
    ),
    StackValidationPolicy(
        name="pod-disruption-budget",
        description="Every replicated serving workload has a PodDisruptionBudget selecting its pods.",
        validate=validate_disruption_budgets,
        config_schema=DISRUPTION_BUDGET_SCHEMA,
    ),
]

"""Runs the real Pulumi program (`__main__.py`) in-process under Pulumi's mocks and records what it registers.

`evaluate("dev")` reads `Pulumi.dev.yaml`, applies test overrides and fake secrets the way `pulumi config set`
would, runs the program once, and returns every registered resource with its inputs (secrets marked), parent,
provider, dependencies and resource options, plus the stack outputs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from unittest import mock

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

from schemas import KNATIVE_MANIFESTS

PROJECT = "model-stack"
ROOT = Path(__file__).resolve().parents[1]
STACKS = sorted(path.name[len("Pulumi."):-len(".yaml")] for path in ROOT.glob("Pulumi.*.yaml"))

# Remote components whose objects are rendered by the provider, invisible under mocks; the stack avoids them
# where what they apply matters (ConfigGroup with `objs` is used instead, and is unpacked above).
OPAQUE_KUBERNETES_TYPES = frozenset({"kubernetes:helm.sh/v4:Chart", "kubernetes:yaml/v2:ConfigFile"})

_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
_SIG_KEY = "4dabf18193072939515e22adb298388d"
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# What `pulumi config set --secret` would hold for each credential key, for stacks whose files name none.
FAKE_SECRETS = {
    "hfToken": "hf_test_token_0000",
    "gatewayApiKeys": "test-key-1,test-key-2",
    "registryPushPassword": "push-password-0000",
    "registryPullPassword": "pull-password-0000",
    "kubeconfig": "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: [{name: prod-admin}]\nusers: []\n",
}


@dataclass(frozen=True)
class Secret:
    """An input value that reached the engine marked as a Pulumi secret."""

    value: Any


@dataclass(frozen=True)
class Unknown:
    """An input that is not known during preview."""


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    custom: bool
    parent: str
    provider: str
    dependencies: list[str]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    replace_on_changes: list[str]
    aliases: list[Any]
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    """`create`, `update`, `delete` as Pulumi durations (`900s`), those set only."""

    def plain(self) -> dict[str, Any]:
        """Inputs with secret markers removed (what the API server would receive)."""
        return unwrap(self.inputs)



@dataclass
class Evaluation:
    stack: str
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Resource]:
        return [resource for resource in self.resources if resource.type == type_]

    def one(self, type_: str, name: Optional[str] = None) -> Resource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def kubernetes_objects(self) -> Iterator[tuple[Resource, dict[str, Any]]]:
        """Every Kubernetes object the program applies, including those inside ConfigGroups."""
        for resource in self.resources:
            if not resource.type.startswith("kubernetes:"):
                continue
            inputs = resource.plain()
            if resource.type == "kubernetes:yaml/v2:ConfigGroup":
                for obj in inputs.get("objs") or []:
                    yield resource, obj
            elif resource.type not in OPAQUE_KUBERNETES_TYPES:
                assert "apiVersion" in inputs and "kind" in inputs, f"{resource.type} {resource.name} has no apiVersion/kind"
                yield resource, inputs


def diffed_inputs(resource: Resource) -> dict[str, Any]:
    """The inputs a change of which the provider reports: pulumi-docker-build's Image and Index skip registry
    passwords in their diff (provider/internal/image.go and index.go), for short-lived tokens such as ECR's."""
    inputs = copy.deepcopy(resource.inputs)
    if resource.type == "docker-build:index:Image":
        for registry in inputs.get("registries") or []:
            registry.pop("password", None)
    if resource.type == "docker-build:index:Index":
        (inputs.get("registry") or {}).pop("password", None)
    return inputs


def unwrap(value: Any) -> Any:
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    """Turns the engine's wire form into Python values, keeping secretness visible as `Secret`."""
    if isinstance(value, dict):
        signature = value.get(_SIG_KEY)
        if signature == _SECRET_SIG:
            return Secret(_decode(value.get("value")))
        if signature == _RESOURCE_SIG:
            return value.get("urn")
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if value == _UNKNOWN:
        return Unknown()
    return value


# Outputs a real provider would compute, per resource type. Each returns extra state merged over the inputs.
MockOutputs = Callable[[pulumi_mocks.MockResourceArgs], dict[str, Any]]
MOCK_OUTPUTS: dict[str, MockOutputs] = {
    # A pushed build: its first tag pinned to a digest derived from the resource name (stable across runs).
    "docker-build:index:Image": lambda args: {
        "ref": f"{args.inputs['tags'][0]}@sha256:{hashlib.sha256(args.name.encode()).hexdigest()}",
        "contextHash": hashlib.sha256(args.inputs["context"]["location"].encode()).hexdigest(),
    },
    # pulumi-eks's Cluster is a multi-language component: one resource under mocks, outputs made up here.
    "eks:index:Cluster": lambda args: {
        "kubeconfigJson": json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [{"name": args.name}]}),
        "clusterSecurityGroupId": f"sg-{args.name}",
    },
    # A pulled image: its repository pinned to the digest that was pulled.
    "docker:index/remoteImage:RemoteImage": lambda args: {
        "repoDigest": f"{args.inputs['name'].rsplit(':', 1)[0]}@sha256:{hashlib.sha256(args.inputs['name'].encode()).hexdigest()}",
    },
    "aws:iam/role:Role": lambda args: {"arn": f"arn:aws:iam::123456789012:role/{args.name}"},
    # What a command printed; the kind cluster's create command prints its kubeconfig.
    "command:local:Command": lambda args: {"stdout": f"# stdout of {args.name}\n"},
    "pulumi:pulumi:StackReference": lambda args: {
        "outputs": {"kubeconfig": FAKE_SECRETS["kubeconfig"]},
        "secretOutputNames": ["kubeconfig"],
    },
}


# What a provider's function (invoke) would answer, per token.
MOCK_CALLS: dict[str, Callable[[pulumi_mocks.MockCallArgs], dict[str, Any]]] = {
    # A 12-hour ECR token: a different one on every call, as AWS hands out.
    "aws:ecr/getAuthorizationToken:getAuthorizationToken": lambda args: {
        "userName": "AWS",
        "password": f"ecr-token-{args.args['registryId']}-{next(_ECR_TOKENS)}",
        "proxyEndpoint": f"https://{args.args['registryId']}.dkr.ecr.{args.args['region']}.amazonaws.com",
    },
}
_ECR_TOKENS = itertools.count()


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        state = dict(args.inputs)
        extra = MOCK_OUTPUTS.get(args.typ)
        if extra:
            state.update(extra(args))
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs):
        answer = MOCK_CALLS.get(args.token)
        return answer(args) if answer else {}


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, evaluation: Evaluation):
        super().__init__(mocks)
        self.evaluation = evaluation

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.evaluation.resources.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    inputs=_decode(json_format.MessageToDict(request.object)),
                    custom=request.custom,
                    parent=request.parent,
                    provider=request.provider,
                    dependencies=list(request.dependencies),
                    protect=request.protect,
                    retain_on_delete=request.retainOnDelete,
                    delete_before_replace=request.deleteBeforeReplace,
                    ignore_changes=list(request.ignoreChanges),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    replace_on_changes=list(request.replaceOnChanges),
                    aliases=list(request.aliases),
                    custom_timeouts={key: value for key in ("create", "update", "delete")
                                     if (value := getattr(request.customTimeouts, key))},
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            self.evaluation.outputs.update(_decode(json_format.MessageToDict(request.outputs)))
        return super().RegisterResourceOutputs(request)


class _WarningCollector(logging.Handler):
    def __init__(self, evaluation: Evaluation):
        super().__init__(logging.WARNING)
        self.evaluation = evaluation

    def emit(self, record: logging.LogRecord) -> None:
        self.evaluation.warnings.append(record.getMessage())


# Namespaces of provider settings a stack file may hold besides the project's own keys (e.g. `aws:region`).
PROVIDER_NAMESPACES = frozenset({"aws"})


def _stack_document(stack: str) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    return document.get("config") or {}


def provider_config(stack: str) -> dict[str, Any]:
    """Provider settings of Pulumi.<stack>.yaml (`aws:region`), full keys."""
    return {key: value for key, value in _stack_document(stack).items() if key.partition(":")[0] in PROVIDER_NAMESPACES}


def stack_config(stack: str) -> dict[str, Any]:
    """The project's keys in the `config:` map of Pulumi.<stack>.yaml, without the project prefix."""
    config = {}
    for key, value in _stack_document(stack).items():
        namespace, _, name = key.partition(":")
        if namespace in PROVIDER_NAMESPACES:
            continue
        assert namespace == PROJECT, f"Pulumi.{stack}.yaml: key {key!r} is outside the {PROJECT} namespace"
        assert not (isinstance(value, dict) and "secure" in value), (
            f"Pulumi.{stack}.yaml: {key} is encrypted; tests supply secrets through FAKE_SECRETS"
        )
        config[name] = value
    return config


_PATH_PART = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\["([^"]+)"\]')


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Sets a value the way `pulumi config set --path` does (value None removes the key)."""
    parts: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_PART.match(path, position)
        assert match and match.end() > position, f"bad config path {path!r}"
        name, index, quoted = match.groups()
        parts.append(int(index) if index is not None else (name or quoted))
        position = match.end()
    target: Any = config
    for part, following in zip(parts, parts[1:]):
        empty = [] if isinstance(following, int) else {}
        if isinstance(target, list):
            target.extend([None] * (part + 1 - len(target)))  # type: ignore[operator]
            if target[part] is None:  # type: ignore[index]
                target[part] = empty  # type: ignore[index]
        else:
            target.setdefault(part, empty)
        target = target[part]  # type: ignore[index]
    last = parts[-1]
    if value is None:
        target.pop(last, None)
    elif isinstance(target, list) and last == len(target):
        target.append(value)
    else:
        target[last] = value  # type: ignore[index]


def _wire(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def evaluate(
    stack: str,
    set: Optional[dict[str, Any]] = None,
    secrets: Optional[dict[str, str]] = None,
    preview: bool = False,
    check_host: bool = False,
    secret_sections: tuple[str, ...] = (),
) -> Evaluation:
    """Runs __main__.py for a stack. `set` applies `--path` overrides; `secrets` replaces FAKE_SECRETS;
    `check_host` runs the kind provider's check of this machine's tools (skipped by default); `secret_sections`
    are top-level keys stored encrypted, as `pulumi config set --secret --path <key>.<part>` leaves them."""
    evaluation, error = run(stack, set, secrets, preview, check_host, secret_sections)
    if error is not None:
        raise error
    return evaluation


def evaluate_failure(
    stack: str,
    set: Optional[dict[str, Any]] = None,
    secrets: Optional[dict[str, str]] = None,
    check_host: bool = False,
    secret_sections: tuple[str, ...] = (),
) -> tuple[BaseException, Evaluation]:
    """Runs a config that must fail; returns the error and what was registered before it."""
    evaluation, error = run(stack, set, secrets, preview=False, check_host=check_host, secret_sections=secret_sections)
    assert error is not None, f"stack {stack} with {set} evaluated without error"
    return error, evaluation


def assert_rejected(
    stack: str, overrides: dict[str, Any], key: str, text: str, secrets: Optional[dict[str, str]] = None,
    given: Any = None,
) -> None:
    """`overrides` stop the stack with a ConfigError whose one line for `key` says `text` (and shows `given` as
    the value given, unless None), and nothing was registered."""
    from stacks.config import ConfigError

    error, evaluation = evaluate_failure(stack, set=overrides, secrets=secrets)
    assert isinstance(error, ConfigError), error
    lines = [line for line in str(error).splitlines() if line.startswith(f"  - {key}:")]
    assert len(lines) == 1 and text in lines[0], str(error)
    assert given is None or lines[0].endswith(f"(given: {given!r})"), lines[0]
    assert evaluation.resources == []


def run(
    stack: str, set: Optional[dict[str, Any]], secrets: Optional[dict[str, str]], preview: bool, check_host: bool = False,
    secret_sections: tuple[str, ...] = (),
) -> tuple[Evaluation, Optional[BaseException]]:
    config = copy.deepcopy(stack_config(stack))
    # Knative's release manifests come from ../shared (no network in tests) unless a test names a directory;
    # a stack without Knative refuses Knative settings, so it gets none.
    config.setdefault("knative", {}).setdefault("manifestsDir", str(KNATIVE_MANIFESTS))
    for path, value in (set or {}).items():
        set_path(config, path, value)
    knative = config.get("knative")
    if not _installs_knative(config) and isinstance(knative, dict) and knative.get("manifestsDir") == str(KNATIVE_MANIFESTS):
        del knative["manifestsDir"]
        if not knative:
            del config["knative"]
    secret_values = FAKE_SECRETS if secrets is None else secrets
    wire = {key: _wire(value) for key, value in provider_config(stack).items()}
    wire.update({f"{PROJECT}:{key}": _wire(value) for key, value in config.items()})
    wire.update({f"{PROJECT}:{key}": value for key, value in secret_values.items()})

    # The kind provider checks this machine for docker and kind before `pulumi up`; tests run where neither is
    # installed, so the check is skipped unless a test asks for it (and fakes the machine itself).
    host_check = contextlib.nullcontext() if check_host else mock.patch("stacks.cluster.check_kind_host")
    with host_check:
        return _execute(ROOT / "__main__.py", PROJECT, stack, wire,
                        [f"{PROJECT}:{key}" for key in [*secret_values, *secret_sections]], preview)


def _installs_knative(config: dict[str, Any]) -> bool:
    """Whether a stack config would install Knative (read leniently: the config may be one a test expects to fail)."""
    def section(key: str) -> dict[str, Any]:
        value = config.get(key)
        return value if isinstance(value, dict) else {}

    if config.get("runtime") == "docker":
        return False
    models = [model for model in section("models").values() if isinstance(model, dict)]
    return section("knative").get("install") is True or any(
        workload.get("workload") == "knative" for workload in [section("runner"), section("gateway"), *models])


def evaluate_program(
    program: Path, stack: str, config: dict[str, Any], secrets: dict[str, str]
) -> Evaluation:
    """Runs another Pulumi program (a consumer under examples/) under the same mocks. Keys are full config names
    (`<project>:<key>`); `secrets` are set as secrets."""
    wire = {key: _wire(value) for key, value in config.items()}
    wire.update(secrets)
    project = yaml.safe_load((program / "Pulumi.yaml").read_text())["name"]
    evaluation, error = _execute(program / "__main__.py", project, stack, wire, list(secrets), preview=False)
    if error is not None:
        raise error
    return evaluation


def _execute(
    main: Path, project: str, stack: str, wire: dict[str, str], secret_keys: list[str], preview: bool
) -> tuple[Evaluation, Optional[BaseException]]:
    evaluation = Evaluation(stack)
    mocks = _Mocks()
    logger = logging.getLogger(f"model-stack-test-{stack}")
    logger.propagate = False
    logger.handlers = [_WarningCollector(evaluation)]
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(
        mocks, project=project, stack=stack, preview=preview, logger=logger,
        monitor=_RecordingMonitor(mocks, evaluation),
    )
    pulumi.runtime.set_all_config(wire, secret_keys)
    # set_mocks registers and finishes a root stack of its own; run the program the way the CLI's language
    # host does instead, inside a fresh root stack that collects `pulumi.export`s.
    pulumi_settings.ROOT.set(None)
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(main), run_name="__main__")))
    except Exception as error:  # noqa: BLE001 - handed to the caller, which decides what is expected
        return evaluation, error
    return evaluation, None

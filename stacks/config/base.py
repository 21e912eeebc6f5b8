"""Building blocks of the stack config schema: the section base class, problem reporting, and value types.

Every section is a frozen pydantic model whose fields are camelCase in `Pulumi.<stack>.yaml` (the Pulumi
convention) and snake_case in Python. Field-level rules live on the field types; rules that relate several
fields live in a section's `check()`, which yields `Problem`s keyed by the path a user would type with
`pulumi config set --path`.
"""

from __future__ import annotations

import difflib
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Optional, get_args, get_origin

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import core_schema

from components.image_rewrite import REFERENCE_COMPONENT, REFERENCE_DOMAIN, REFERENCE_TAG, is_registry_host


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: the key as typed with `--path`, what was given, what is allowed."""

    key: str
    message: str
    given: Any = None

    def __str__(self) -> str:
        given = "" if self.given is None else f" (given: {_show(self.given)})"
        return f"{self.key}: {self.message}{given}"


class InapplicableSetting(Problem):
    """A setting the chosen runtime or provider does not read: other problems at or under its key are moot (the
    setting has no effect to be wrong about), so only this one is reported there."""


def without_moot(problems: list[Problem]) -> list[Problem]:
    """`problems` less those at or under the key of an `InapplicableSetting`."""
    inapplicable = [problem.key for problem in problems if isinstance(problem, InapplicableSetting)]
    return [problem for problem in problems if isinstance(problem, InapplicableSetting) or not any(
        problem.key == key or problem.key.startswith((f"{key}.", f"{key}[")) for key in inapplicable)]


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def join_key(path: str, part: str | int) -> str:
    """Extends a config path the way `pulumi config set --path` spells it."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
        return f"{path}.{part}" if path else part
    return f'{path}["{part}"]'


def join_keys(path: str, dotted: str) -> str:
    """`join_key` for a dotted run of plain field names (`scaling.maxReplicas`)."""
    for part in dotted.split("."):
        path = join_key(path, part)
    return path


# (id of a section, field name) pairs a running check has read; None while no check runs.
_READS: ContextVar[Optional[set[tuple[int, str]]]] = ContextVar("config_reads", default=None)

Invalid = frozenset[tuple[int, str]]
"""Fields that failed validation, as (id of the section holding them, field name): the loader put defaults in
their place so the other checks can still run, but no problem may rest on such a stand-in."""


def unaffected(found: Iterator[Problem], invalid: Invalid) -> Iterator[Problem]:
    """The problems `found` yields until it first reads an invalid field: a conclusion drawn from a stand-in
    default would report a problem the user does not have."""
    reads: set[tuple[int, str]] = set()
    while True:
        token = _READS.set(reads)
        try:
            problem = next(found)
        except StopIteration:
            return
        finally:
            _READS.reset(token)
        if reads & invalid:
            return
        yield problem


class Section(BaseModel):
    """Base of every config section: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
        # Fields such as `model_hub` are settings, not pydantic's: older pydantic releases warn about the prefix.
        protected_namespaces=(),
    )

    def __getattribute__(self, name: str) -> Any:
        reads = _READS.get()
        if reads is not None and name in type(self).model_fields:
            reads.add((id(self), name))
        return super().__getattribute__(name)

    def problems(self, path: str, invalid: Invalid = frozenset()) -> Iterator[Problem]:
        """All cross-field problems of this section and the sections inside it, except those that would rest on
        an `invalid` field."""
        for name, field in type(self).model_fields.items():
            key = join_key(path, field.alias or name)
            value = getattr(self, name)
            if isinstance(value, Section):
                yield from value.problems(key, invalid)
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    if isinstance(item, Section):
                        yield from item.problems(join_key(key, index), invalid)
            elif isinstance(value, dict):
                for item_key, item in value.items():
                    if isinstance(item, Section):
                        yield from item.problems(join_key(key, item_key), invalid)
        for found in [self._repeated_entries(path), *self.checks(path)]:
            yield from unaffected(found, invalid)

    def _repeated_entries(self, path: str) -> Iterator[Problem]:
        """Entries of `unique` lists that repeat an earlier one, each at its own index."""
        for name, field in type(self).model_fields.items():
            rule = next((meta for meta in field.metadata if isinstance(meta, unique)), None)
            if rule is None:
                continue
            key = join_key(path, field.alias or name)
            first: dict[Any, int] = {}
            for index, entry in enumerate(getattr(self, name)):
                earlier = first.setdefault(entry, index)
                if earlier != index:
                    yield Problem(join_key(key, index), f"repeats {join_key(key, earlier)}: {rule.reason}",
                                  entry if rule.shown and isinstance(entry, (str, int)) else None)

    def check(self, path: str) -> Iterator[Problem]:
        """Rules between this section's own fields; sections override it."""
        return iter(())

    def checks(self, path: str) -> list[Iterator[Problem]]:
        """Independent groups of rules: one that reads an invalid field stops, the others still report. Sections
        whose rules read different fields override it; the default is `check` alone."""
        return [self.check(path)]


def set_keys(value: Any, key: str) -> list[tuple[str, Any]]:
    """(key, value) of every value the config sets at or under `key` (not defaults), so a setting that is wrong
    where it stands is reported where the user wrote it, not as its whole section."""
    if isinstance(value, Section):  # an empty map sets nothing
        return [nested for name, field in type(value).model_fields.items() if name in value.model_fields_set
                for nested in set_keys(getattr(value, name), join_key(key, field.alias or name))]
    if isinstance(value, dict) and value and all(isinstance(item, Section) for item in value.values()):
        return [nested for name, item in value.items() for nested in set_keys(item, join_key(key, name))]
    return [(key, value)]  # a value, or a list or map of values: one setting


@dataclass(frozen=True)
class only_on:
    """Annotated metadata for a setting only one runtime reads: on the other it would do nothing, silently."""

    runtime: str

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return {**handler(schema), RUNTIME_SCHEMA_KEY: self.runtime}


# The JSON Schema keyword (an extension: validators ignore it) naming the one runtime a setting applies to.
RUNTIME_SCHEMA_KEY = "x-runtime"


def settings_for_other_runtimes(section: Section, path: str, runtime: str) -> Iterator[tuple[str, Any, str]]:
    """(key, value, runtime it applies to) of every value set under `section` that only another runtime reads."""
    for name, field in type(section).model_fields.items():
        if name not in section.model_fields_set:
            continue
        key = join_key(path, field.alias or name)
        value = getattr(section, name)
        rule = next((meta for meta in field.metadata if isinstance(meta, only_on)), None)
        if rule is not None and rule.runtime != runtime:
            yield from ((setting, given, rule.runtime) for setting, given in set_keys(value, key))
        elif isinstance(value, Section):
            yield from settings_for_other_runtimes(value, key, runtime)
        elif isinstance(value, dict):
            for item_key, item in value.items():
                if isinstance(item, Section):
                    yield from settings_for_other_runtimes(item, join_key(key, item_key), runtime)


def unknown_key_problem(path: str, key: str, allowed: list[str]) -> Problem:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return Problem(join_key(path, key), f"unknown key; allowed here: {', '.join(sorted(allowed))}{hint}")


def section_at(model: type[Section], loc: tuple) -> Optional[type[Section]]:
    """The section class a pydantic error location points into (map keys and list indices skipped)."""
    current: Any = model
    entry_key_next = False
    for part in loc:
        if entry_key_next:  # the key or index of an entry of the list or map just entered
            entry_key_next = False
            continue
        if not (isinstance(current, type) and issubclass(current, Section)):
            return None
        by_alias = {field.alias or name: field for name, field in current.model_fields.items()}
        if part not in by_alias:
            return None
        annotation = by_alias[part].annotation
        current = _section_in(annotation)
        entry_key_next = any(get_origin(arg) in (list, tuple, dict) for arg in (annotation, *get_args(annotation)))
    return current if isinstance(current, type) and issubclass(current, Section) and not entry_key_next else None


def _section_in(annotation: Any) -> Any:
    """Unwraps Optional[...], list[...] and dict[str, ...] down to a Section class, if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in get_args(annotation):
        found = _section_in(arg)
        if found is not None:
            return found
    return None


# --- value types ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class matching:
    """Annotated metadata for strings that must fully match `pattern`; the error says `must be <description>`,
    and the pattern shows in the generated JSON Schema so editors flag a bad value while it is typed."""

    pattern: str
    description: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        compiled = re.compile(self.pattern)

        def validate(value: str) -> str:
            if not compiled.fullmatch(value):
                raise ValueError(f"must be {self.description}")
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return {**handler(schema), "pattern": f"^(?:{self.pattern})$"}


@dataclass(frozen=True)
class unique:
    """Annotated metadata for a list whose entries must all differ; `reason` says why a repeat is wrong. Editors
    see `uniqueItems` in the JSON Schema."""

    reason: str
    shown: bool = True
    """Whether a repeat's value may be shown in the error (not for text that could be a credential)."""

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return {**handler(schema), "uniqueItems": True}


def no_whitespace(description: str) -> matching:
    """An identifier with no grammar of its own beyond being one word: `description` says what it names."""
    return matching(r"\S+", f"{description} (not empty, no spaces)")


DockerNetworkName = Annotated[str, matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "a Docker network name")]
"""The name of a Docker network (`docker network create NAME`)."""


# --- image references ----------------------------------------------------------------------------------------
# Grammar of github.com/distribution/reference (what Docker, containerd and Kubernetes accept).

_COMPONENT = REFERENCE_COMPONENT
_DOMAIN = REFERENCE_DOMAIN
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{REFERENCE_TAG}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference."""

    name: str
    tag: Optional[str]
    digest: Optional[str]

    @classmethod
    def parse(cls, text: str) -> "ImageReference":
        match = _IMAGE_REFERENCE.fullmatch(text)
        if not match:
            raise ValueError(text)
        return cls(name=match["name"], tag=match["tag"], digest=match["digest"])

    @property
    def pinned(self) -> bool:
        return self.digest is not None


def _image_reference(value: str) -> str:
    try:
        ImageReference.parse(value)
    except ValueError:
        raise ValueError(
            "must be an image reference such as registry.example.com/team/app:1.2.3 "
            "or name@sha256:<64 hex digits> (lowercase repository, optional tag and digest)"
        ) from None
    return value


_REPOSITORY_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_REGISTRY_PREFIX_HINT = (
    "a registry host or repository prefix such as docker.io, ghcr.io/acme, vllm or registry.internal:5000/mirror "
    "(no scheme, lowercase path components, no tag, digest or trailing slash)")


_REGISTRY_LOCATION_HINT = ("a registry host with an optional port and repository path, such as ghcr.io/acme, "
                           "123456789012.dkr.ecr.us-east-1.amazonaws.com or localhost:5001 (no scheme, lowercase path "
                           "components, no tag, digest or trailing slash)")
_REGISTRY_HOST_HINT = "a registry host with an optional port, such as registry.internal:5000 or ghcr.io (no scheme or path)"


def _registry_place(value: str, host_first: bool, hint: str) -> str:
    """A registry host, a repository path on it, or (unless `host_first`) a path on Docker Hub: the start of a
    name in the distribution reference grammar. The first component is a host when `host_first`, else exactly
    when reference reads it as one. A URL's scheme is named as the mistake it is."""
    first, slash, rest = value.partition("/")
    host, path = (first, rest) if host_first or is_registry_host(first) else ("", value)
    problem = ("has a scheme; " if "://" in value else "has a tag or digest; " if "@" in path or ":" in path else
               "ends with '/'; " if value.endswith("/") else "")
    if problem or not (
        (not host or re.fullmatch(_DOMAIN, host)) and ((host and not slash) or _REPOSITORY_PATH.fullmatch(path))
    ):
        raise ValueError(f"{problem}must be {hint}")
    return value


def _registry_host(value: str) -> str:
    if "://" not in value and "/" in value:
        raise ValueError(f"has a path; must be {_REGISTRY_HOST_HINT}")
    return _registry_place(value, True, _REGISTRY_HOST_HINT)


_HOST_PATH_PATTERN = f"(?:{_DOMAIN})(?:/{_REPOSITORY_PATH.pattern})?"
RegistryPrefix = Annotated[str, AfterValidator(lambda value: _registry_place(value, False, _REGISTRY_PREFIX_HINT)),
                           WithJsonSchema({"type": "string", "pattern": f"^(?:{_HOST_PATH_PATTERN}|{_REPOSITORY_PATH.pattern})$"})]
"""Where images come from or go to, as `images.rewrite` matches them: a host, a path on one, or a Docker Hub path."""
RegistryLocation = Annotated[str, AfterValidator(lambda value: _registry_place(value, True, _REGISTRY_LOCATION_HINT)),
                             WithJsonSchema({"type": "string", "pattern": f"^{_HOST_PATH_PATTERN}$"})]
"""A registry host and an optional repository path on it (where the stack pushes)."""
RegistryHost = Annotated[str, AfterValidator(_registry_host), WithJsonSchema({"type": "string", "pattern": f"^(?:{_DOMAIN})$"})]
"""A registry host and optional port, as a reference's domain names it."""


class _ImageMarker:
    """Marks fields that hold image references, so stack-wide image rules reach every one of them."""


ImageRef = Annotated[str, AfterValidator(_image_reference), _ImageMarker()]


def _holds_images(annotation: Any) -> bool:
    if any(isinstance(meta, _ImageMarker) for meta in getattr(annotation, "__metadata__", ())):
        return True
    return any(_holds_images(arg) for arg in get_args(annotation))


def image_fields(section: Section, path: str) -> Iterator[tuple[str, str]]:
    """Every image reference in a section tree, with the key it is configured under."""
    for name, field in type(section).model_fields.items():
        if not (_holds_images(field.annotation) or _section_in(field.annotation)):
            continue  # not read at all: a check must not depend on fields it does not look at
        key = join_key(path, field.alias or name)
        value = getattr(section, name)
        items: list[tuple[str, Any]]
        if isinstance(value, dict):
            items = [(join_key(key, k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(join_key(key, i), v) for i, v in enumerate(value)]
        else:
            items = [(key, value)]
        for item_key, item in items:
            if isinstance(item, Section):
                yield from image_fields(item, item_key)
            elif isinstance(item, str) and _holds_images(field.annotation):
                yield item_key, item


# --- Kubernetes grammar ---------------------------------------------------------------------------------------
# From k8s.io/apimachinery: pkg/util/validation (names, label keys and values, ConfigMap and env keys) and
# pkg/api/resource (quantities).

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
DnsLabel = Annotated[str, Field(max_length=63), matching(
    _LABEL, "a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
DnsSubdomain = Annotated[str, Field(max_length=253), matching(
    _SUBDOMAIN, "a DNS subdomain: at most 253 characters of dot-separated DNS labels (lowercase letters, digits, '-')")]
# Namespaces the cluster or Knative owns: the stack creates its namespace and would take one of them over.
RESERVED_NAMESPACES = ("default", "kube-*", "knative-serving", "kourier-system")
Namespace = Annotated[str, Field(max_length=63), matching(
    rf"(?!kube-|default$|knative-serving$|kourier-system$){_LABEL}",
    f"a namespace name (a DNS label of at most 63 lowercase letters, digits and '-') other than the reserved "
    f"{', '.join(RESERVED_NAMESPACES)}")]
_LABEL_NAME = r"(?=[^/]{1,63}$)[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
LabelKey = Annotated[str, matching(
    rf"(?:(?=[^/]{{1,253}}/){_SUBDOMAIN}/)?{_LABEL_NAME}",
    "a label key: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit (e.g. nvidia.com/gpu.product)")]
LabelValue = Annotated[str, Field(max_length=63), matching(
    r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?",
    "a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")]
# An autoscaler's metric name (autoscaling/v2 MetricIdentifier): the API server takes any path segment name, since
# the HPA controller asks the metrics API for it by URL path; Prometheus names (`vllm:num_requests_waiting`) and
# adapter-renamed ones pass.
MetricName = Annotated[str, matching(
    r"(?!\.\.?$)[^/%]+", "a metric name: not empty, not '.' or '..', without '/' or '%' (a path segment name, "
    "as Kubernetes' autoscaling API requires), such as vllm:num_requests_waiting")]
# Env of Kubernetes containers travels as ConfigMap keys and must be an environment variable name as well.
KubernetesEnvName = Annotated[str, Field(max_length=253), matching(
    r"[-._a-zA-Z][-._a-zA-Z0-9]*", "an environment variable name usable as a ConfigMap key (letters, digits, '_', "
    "'-', '.'; not starting with a digit)")]


def env_value(value: Any) -> Any:
    """Env values as `pulumi config set --path` writes them: `8` and `true` arrive as a number and a boolean."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(env_value), WithJsonSchema({"type": ["string", "number", "boolean"]})]

_QUANTITY = re.compile(
    r"\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_SUFFIX_FACTORS = {
    None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity_value(text: str) -> float:
    """The number a Kubernetes quantity stands for (`512Mi` -> 536870912, `1e9` -> 1000000000)."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(text)
    factor = 10 ** int(match["exponent"]) if match["exponent"] else _SUFFIX_FACTORS[match["suffix"]]
    return float(match["number"]) * factor


def _quantity(value: str | int | float) -> str:
    text = value if isinstance(value, str) else format(value, "g") if isinstance(value, float) else str(value)
    if _QUANTITY.fullmatch(text) is None or quantity_value(text) <= 0:
        raise ValueError(
            "must be a positive Kubernetes quantity such as 500m, 2, 1e9, 512Mi or 20Gi "
            "(binary suffixes Ki Mi Gi Ti Pi Ei, decimal n u m k M G T P E, or an exponent e<n>)"
        )
    return text


def _bytes(text: str) -> str:
    match = _QUANTITY.fullmatch(text)
    assert match is not None  # _quantity ran first
    if match["suffix"] in ("m", "u", "n") or quantity_value(text) < 1:
        raise ValueError(
            f"must be a number of bytes: {text} is {quantity_value(text):g} bytes (m means thousandths); "
            f"did you mean {match['number']}{'Mi' if match['suffix'] == 'm' else 'Ki'}?"
        )
    return text


def _whole_bytes(text: str) -> str:
    if not quantity_value(text).is_integer():
        raise ValueError(f"must be a whole number of bytes: {text} is {quantity_value(text):g} bytes")
    return text


def byte_count(text: str) -> int:
    """The bytes a `WholeByteQuantity` stands for (`1Mi` -> 1048576)."""
    return int(quantity_value(text))


_QUANTITY_SCHEMA = {"anyOf": [
    {"type": "number", "exclusiveMinimum": 0},
    # JSON Schema's regular expressions (ECMA-262) write no `P` in named groups; none are needed there.
    {"type": "string", "pattern": f"^(?:{re.sub(r'[?]P<[a-z]+>', '', _QUANTITY.pattern)})$"},
]}
Quantity = Annotated[str, BeforeValidator(_quantity), WithJsonSchema(_QUANTITY_SCHEMA)]
ByteQuantity = Annotated[str, BeforeValidator(_quantity), AfterValidator(_bytes), WithJsonSchema(_QUANTITY_SCHEMA)]
WholeByteQuantity = Annotated[ByteQuantity, AfterValidator(_whole_bytes)]
"""A size a program reads as a count of bytes (a limit passed on as an integer), not a request to Kubernetes."""

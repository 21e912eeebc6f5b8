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

from components.image_rewrite import is_registry_host


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: the key as typed with `--path`, what was given, what is allowed."""

    key: str
    message: str
    given: Any = None

    def __str__(self) -> str:
        given = "" if self.given is None else f" (given: {_show(self.given)})"
        return f"{self.key}: {self.message}{given}"


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
        for found in self.checks(path):
            yield from unaffected(found, invalid)

    def check(self, path: str) -> Iterator[Problem]:
        """Rules between this section's own fields; sections override it."""
        return iter(())

    def checks(self, path: str) -> list[Iterator[Problem]]:
        """Independent groups of rules: one that reads an invalid field stops, the others still report. Sections
        whose rules read different fields override it; the default is `check` alone."""
        return [self.check(path)]


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


# --- image references ----------------------------------------------------------------------------------------
# Grammar of github.com/distribution/reference (what Docker, containerd and Kubernetes accept).

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
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


def _registry_prefix(value: str) -> str:
    """A registry host, a repository path on it, or (without a host) a path on Docker Hub: the start of a name in
    the distribution reference grammar. The first component is a host exactly when reference reads it as one."""
    first, slash, rest = value.partition("/")
    host, path = (first, rest) if is_registry_host(first) else ("", value)
    problem = ("has a scheme; " if "://" in value else "has a tag or digest; " if "@" in path or ":" in path else
               "ends with '/'; " if value.endswith("/") else "")
    if problem or not (
        (not host or re.fullmatch(_DOMAIN, host)) and ((host and not slash) or _REPOSITORY_PATH.fullmatch(path))
    ):
        raise ValueError(f"{problem}must be {_REGISTRY_PREFIX_HINT}")
    return value


RegistryPrefix = Annotated[str, AfterValidator(_registry_prefix), WithJsonSchema({
    "type": "string", "pattern": f"^(?:(?:{_DOMAIN})(?:/{_REPOSITORY_PATH.pattern})?|{_REPOSITORY_PATH.pattern})$"})]


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

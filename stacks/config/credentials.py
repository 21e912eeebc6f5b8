"""Credentials outside the secret keys: wherever a token, password or key shows up in plain config, it is refused
with the place named and where it belongs instead.

Plain config is stored in `Pulumi.<stack>.yaml` and the state in clear text, and most places a value lands are
visible too (pod specs, image history, labels). The one exception is an env map of a section stored with
`pulumi config set --secret --path ...`: the stack carries such values into a Kubernetes Secret or a
container's secret environment, never into a ConfigMap or plain env.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

from .base import Problem, join_key

_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "token", "apikey", "credential", "credentials"})
_SECRET_WORD_PAIRS = frozenset({("api", "key"), ("api", "keys"), ("private", "key"), ("access", "key"), ("auth", "key")})
# `HF_TOKEN_PATH=/var/run/secrets/hf/token` points at a mounted secret, which is the right way to pass one;
# `MAX_TOKENS` and `TOKENIZERS_PARALLELISM` are sizes and switches.
_REFERENCE_WORDS = frozenset({"path", "file", "dir", "name", "ref", "type", "env", "length", "limit", "count"})
# A switch or a number is no credential, whatever its name (`VLLM_ALLOW_RUNTIME_LORA_UPDATING_TOKEN=1`).
_PLAIN_SETTING = re.compile(r"(?i)true|false|yes|no|on|off|enabled|disabled|none|[0-9]+(\.[0-9]+)?")
CREDENTIAL_PATTERNS = {
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b"),
    "an OpenAI-style API key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
    "a URL with a user and password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE),
}
# Environment variables the stack's own secret keys already fill.
SECRET_KEY_FOR_ENV = {
    "HF_TOKEN": "hfToken",
    "HUGGING_FACE_HUB_TOKEN": "hfToken",
    "GATEWAY_API_KEYS": "gatewayApiKeys",
}
# Env maps whose values reach a container's environment; in a section stored as a secret they stay secret.
# ANY_NAME stands for each entry of a map of named sections (`models.<name>.env`).
ANY_NAME = object()
SECRET_CAPABLE_ENV = (("runner", "env"), ("models", ANY_NAME, "env"), ("docker", "runner", "env"),
                      ("docker", "gateway", "env"))


def _secret_capable(location: tuple) -> bool:
    return any(len(pattern) == len(location) and all(part is ANY_NAME or part == given
                                                     for part, given in zip(pattern, location))
               for pattern in SECRET_CAPABLE_ENV)


def names_a_secret(name: str) -> bool:
    """`HF_TOKEN`, `apiKey`, `--api-key`, `db.password` name secrets; `MAX_TOKENS`, `PASSWORD_FILE` do not."""
    words = [word.lower() for word in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)]
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    return bool(_SECRET_WORDS & set(words)) or any(pair in _SECRET_WORD_PAIRS for pair in zip(words, words[1:]))


def credential_in(value: Any) -> Optional[str]:
    """What kind of credential a value plainly contains, or None."""
    if not isinstance(value, str):
        return None
    return next((what for what, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(value)), None)


def credential_under(name: str, value: Any) -> Optional[str]:
    """What a `name: value` setting holds when it is a credential: a value under a credential's name (not empty,
    a switch or a number), or a value that is one whatever its name."""
    if names_a_secret(name) and isinstance(value, str) and value and not _PLAIN_SETTING.fullmatch(value):
        return "a credential"
    return credential_in(value)


def credentials_in_arguments(arguments: list[Any]) -> Iterator[tuple[int, str]]:
    """(index, what) of credentials in a command line: `--api-key=X`, `--api-key X`, or a value that is one."""
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        flag, equals, value = argument.partition("=") if isinstance(argument, str) else ("", "", None)
        if flag.startswith("-") and equals:
            found = credential_under(flag, value)
        elif flag.startswith("-") and isinstance(following, str) and not following.startswith("-") \
                and credential_under(flag, following):
            found = credential_under(flag, following)
            index += 1  # the value belongs to this flag
        else:
            found = credential_in(argument)
        if found:
            yield index, found
        index += 1


def _where_instead(container: tuple, name: str) -> str:
    """Where the credential at `container` -> `name` belongs instead."""
    secret_key = SECRET_KEY_FOR_ENV.get(name.upper())
    if secret_key:
        return f"set the `{secret_key}` secret instead (`pulumi config set --secret {secret_key} <value>`)"
    if container[-1:] == ("buildArgs",):
        return ("build arguments are kept in the image's history, encrypted config or not: "
                "give the build no credential (push credentials are the `registryPushPassword` secret)")
    if _secret_capable(container):
        return (f"store it encrypted: `pulumi config set --secret --path {_key((*container, name))} <value>` "
                "(the stack then keeps the whole section secret and passes its env through a Secret)")
    return ("plain config is stored and deployed in clear text here: put it in an environment variable set with "
            "`pulumi config set --secret --path runner.env.<NAME> <value>` (or docker.<service>.env), or in "
            "the secret keys hfToken, gatewayApiKeys, registryPushPassword, registryPullPassword, kubeconfig")


def _key(location: tuple) -> str:
    key = ""
    for part in location:
        key = join_key(key, part)
    return key


def credential_problems(document: dict[str, Any], secret_sections: frozenset[str]) -> Iterator[Problem]:
    """Every credential in the plain config document (top-level key -> value), keyed by where it is."""
    yield from _walk(document, (), secret_sections)


def _walk(value: Any, location: tuple, secret_sections: frozenset[str]) -> Iterator[Problem]:
    if isinstance(value, dict):
        secret_env = _secret_capable(location) and location[0] in secret_sections
        for name, item in value.items():
            here = (*location, name)
            found = None if isinstance(item, (dict, list)) else credential_under(str(name), item)
            if found and not secret_env:
                yield Problem(_key(here), f"holds {found} in plain config; {_where_instead(location, str(name))}")
            elif not found:
                yield from _walk(item, here, secret_sections)
    elif isinstance(value, list):
        # The env of the section holding the command line, where it has one that can be kept secret.
        env = (*location[:-1], "env") if _secret_capable((*location[:-1], "env")) else ("runner", "env")
        for index, found in credentials_in_arguments(value):
            yield Problem(
                _key((*location, index)),
                f"holds {found} on a command line, where the pod spec and the process list show it; pass it in "
                f"an environment variable set with `pulumi config set --secret --path {_key(env)}.<NAME> <value>`",
            )
        for index, item in enumerate(value):
            if isinstance(item, (dict, list)):
                yield from _walk(item, (*location, index), secret_sections)
    elif (found := credential_in(value)) is not None:
        yield Problem(_key(location), f"holds {found} in plain config; {_where_instead(location[:-1], str(location[-1]))}")

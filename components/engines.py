"""What each model-serving engine needs to run one model behind an OpenAI-compatible API.

An `EngineProfile` knows an engine's image, port and API path, which endpoint says the process is alive and which
says the configured model can answer, how the model gets into the persistent cache before the engine serves
(so a restart never downloads it again), and which writable directories and hardware it needs. The Kubernetes
and Docker runtimes both render their containers from a profile; neither knows engine specifics.

Endpoints and flags, per engine (checked against each project's docs and code):
- Docker Model Runner (docker/model-runner): `MODEL_RUNNER_PORT` switches it from a unix socket to TCP;
  `MODELS_PATH` is its model store; `DISABLE_SERVER_UPDATE` keeps it on the llama.cpp server its image bundles
  (pkg/envconfig, pkg/server); OpenAI API under `/engines/v1`; `POST /models/create {"from": ...}` pulls;
  `GET /engines/v1/models/<model>` answers 404 until the model is in the store. Models load on first request.
  The image has no HTTP client, so the pull runs from a small sidecar that stays up once the pull is done (every
  pod start pulls, a no-op when the store has the model), and readiness gates traffic until the model is there.
- vLLM (vllm/vllm-openai): `vllm serve <model>`; the API server only listens once the engine has loaded the
  weights, so `/v1/models` answering means the model can serve; `/health` is the cheap liveness check. Weights
  come from the Hugging Face cache (`HF_HOME`); the pre-pull runs `snapshot_download` (idempotent: files already
  in the cache are not fetched again) and the server runs with `HF_HUB_OFFLINE=1`, so a restart never touches the
  hub. Tensor parallelism needs a memory-backed `/dev/shm`. `VLLM_API_KEY` makes every path under `/v1` ask for
  `Authorization: Bearer <key>` (`/health` stays open): `/health` is then the model-ready check, and it says the
  same, since the server listens only once the engine has loaded (api_server `run_server_worker`).
- Ollama (ollama/ollama): `/` answers "Ollama is running"; models live in `OLLAMA_MODELS`; the pre-pull starts a
  private `ollama serve` in the init container and runs `ollama pull` unless `ollama show` finds the model;
  readiness runs `ollama show <model>`, which fails until the model is in the store. It writes its identity key
  under `$HOME/.ollama`, so HOME is a writable emptyDir.
- llama.cpp server (ghcr.io/ggml-org/llama.cpp, `server-b<build>` tags): `/health` answers 503 while the model loads and 200 once
  it can serve; the model is one GGUF file, fetched with the image's curl into the cache unless already there.
  `LLAMA_API_KEY` (common/arg.cpp, `--api-key`) makes the API ask for a bearer key; `/health` stays open.

All four run as an arbitrary non-root UID when HOME and the cache are writable, so every profile complies with
the "restricted" Pod Security Standard with a read-only root filesystem.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from .image_rewrite import REFERENCE_COMPONENT, REFERENCE_DOMAIN, REFERENCE_TAG

CACHE_MOUNT_PATH = "/models"
HOME_PATH = "/home/engine"
TMP_PATH = "/tmp"
SHM_PATH = "/dev/shm"
HF_TOKEN_ENV = "HF_TOKEN"
# huggingface_hub's variable for a file holding the token: on Kubernetes the token is a mounted Secret file, so it
# is in no process environment (/proc/*/environ) and no child process inherits it.
HF_TOKEN_PATH_ENV = "HF_TOKEN_PATH"
MODEL_ENV = "MODEL"


@dataclass(frozen=True)
class ProbeAction:
    """How a probe asks the engine something: an HTTP GET on its port, or a command in its container."""

    http_path: Optional[str] = None
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullStep:
    """How the model gets into the cache before the engine serves it.

    `init` steps run to completion before the engine starts; `sidecar` steps need the engine running (they
    talk to its API) and keep running beside it, while readiness holds traffic back until the model is there.
    """

    mode: str
    command: tuple[str, ...]
    image: Optional[str] = None
    """None: the engine's own image (it has the tools the step needs)."""

    env: dict[str, str] = field(default_factory=dict)
    """Environment the step needs on top of the engine's."""


@dataclass(frozen=True)
class EngineContainer:
    """An engine rendered for one model: everything a runtime needs to build its container."""

    image: str
    port: int
    api_base_path: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: dict[str, str]
    liveness: ProbeAction
    model_ready: ProbeAction
    pull: PullStep
    writable_paths: dict[str, str]
    """Volume name -> directory the engine writes to (everything else is read-only)."""
    shared_memory: bool
    needs_gpu: bool
    http_client: Optional[str] = None
    """`curl` or `python3` when the image has one (Docker health checks run inside the container)."""


@dataclass(frozen=True)
class EngineProfile:
    name: str
    image: str
    port: int
    api_base_path: str
    liveness_path: str
    model_pattern: str
    model_example: str
    needs_gpu: bool = False
    shared_memory: bool = False
    http_client: Optional[str] = None
    """`curl` or `python3` when the image has one: what a Docker health check can ask the engine over HTTP with."""
    downloads_from_hub: bool = False
    """Weights come from a Hugging Face-compatible hub, so a mirror can stand in for it (`model_hub`)."""
    api_key_env: Optional[str] = None
    """Variable the engine reads an API key from, after which its OpenAI API answers only requests that carry it
    (`Authorization: Bearer <key>`) while its liveness and model-ready paths stay open; None: it takes no key."""
    ready_path_with_key: Optional[str] = None
    """Model-ready path to probe instead while the engine requires a key, where the usual one asks for it."""
    metrics_path: Optional[str] = None
    """Path of the engine's Prometheus metrics on its API port; None: the engine exports none (Ollama, Docker
    Model Runner), and the gateway's per-model gauges stand in for it."""
    model_rule: Optional[Callable[[str], Optional[str]]] = None
    """What the engine refuses beyond `model_pattern`, for a model the pattern admits: the reason, or None."""
    batch_flags: tuple[str, ...] = ()
    """Arguments that set how many requests the engine runs at once."""
    batch_env: Optional[str] = None
    """The environment variable that sets it, where the engine reads one."""
    default_batch: int = 1
    """How many requests the engine runs at once when nothing sets it."""

    def batch_capacity(self, args: Sequence[str], env: Mapping[str, str]) -> int:
        """How many requests a replica runs at once with these extra arguments and environment: what the gateway
        admits to it before requests wait. The last setting wins, as in the engines' own parsers; a value the
        engine reads as "automatic" (llama.cpp's -1) is its default."""
        value = env.get(self.batch_env) if self.batch_env else None
        for index, argument in enumerate(args):
            flag, equals, inline = argument.partition("=")
            if flag in self.batch_flags:
                value = inline if equals else (args[index + 1] if index + 1 < len(args) else None)
        try:
            number = int(value) if value is not None else 0
        except ValueError:
            number = 0
        return number if number > 0 else self.default_batch

    def model_problem(self, model: str) -> Optional[str]:
        """Why `model` cannot name a model for this engine, or None."""
        if not re.fullmatch(self.model_pattern, model):
            return f"must name a {self.name} model such as {self.model_example!r} ({self.model_grammar})"
        return self.model_rule(model) if self.model_rule else None

    @property
    def model_grammar(self) -> str:
        return MODEL_GRAMMARS[self.name]

    def render(
        self, model: str, port: Optional[int] = None, image: Optional[str] = None, model_hub: Optional[str] = None
    ) -> EngineContainer:
        port = port or self.port
        command, args, env, model_ready, pull = _RENDERERS[self.name](model, port, model_hub or DEFAULT_MODEL_HUB)
        return EngineContainer(
            image=image or self.image,
            port=port,
            api_base_path=self.api_base_path,
            command=command,
            args=args,
            env={"HOME": HOME_PATH, **env},
            liveness=ProbeAction(http_path=self.liveness_path),
            model_ready=model_ready,
            pull=pull,
            writable_paths={"home": HOME_PATH, "tmp": TMP_PATH},
            shared_memory=self.shared_memory,
            needs_gpu=self.needs_gpu,
            http_client=self.http_client,
        )


# --- model references -----------------------------------------------------------------------------------------
# Each engine's own grammar. A reference becomes directories in the cache (llama.cpp's files, Ollama's manifests)
# and URL paths (the hub download, Docker Model Runner's model-ready check), so none admits a path segment that
# is empty, `.` or `..`: it would name a place outside the one the reference stands for.

# A Hugging Face repository id (huggingface_hub's validate_repo_id): owner and name of letters, digits, '_', '.'
# and '-', starting and ending with a letter, digit or '_', without '--' or '..'; the name at most 96 characters.
_HF_PART = r"(?![A-Za-z0-9_.-]*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
HF_REPOSITORY = rf"{_HF_PART}/(?=[^/]{{1,96}}(?:/|$)){_HF_PART}"
# A file path in a repository: segments of letters, digits, '_', '.' and '-', none of them `.` or `..`.
_FILE_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+"
# llama.cpp's gguf-split names every part `<prefix>-<index>-of-<count>.gguf`, counting from 1 (llama.cpp's
# llama_split_path); a split model loads from its first part, and refuses any other.
_GGUF_SPLIT = re.compile(r"(?P<prefix>.+)-(?P<index>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf")
# Ollama's model names (ollama types/model/name.go): [host/][namespace/]model[:tag], parts of letters, digits,
# '_', '.' and '-' (no '.' in a namespace, no '..' anywhere), at most 128 characters in all. Its Hugging Face
# references are names on the host hf.co or huggingface.co: hf.co/<user>/<repository>[:<quantization>].
_OLLAMA_PART = r"(?!\.(?:[/:]|$))[A-Za-z0-9_.-]+"
_OLLAMA_NAME = rf"(?!.*\.\.)(?=.{{1,128}}$)(?:(?:{_OLLAMA_PART}/)?[A-Za-z0-9_-]+/)?{_OLLAMA_PART}(?::{_OLLAMA_PART})?"

MODEL_GRAMMARS = {
    "docker-model-runner": "an OCI reference: [registry/]lowercase/path[:tag]",
    "vllm": "a Hugging Face repository <owner>/<name>",
    "ollama": "[host/][namespace/]model[:tag], e.g. hf.co/<user>/<repository>:<quantization> for Hugging Face",
    "llama.cpp": "<owner>/<repository>/[<folder>/...]<file>.gguf, the first part of a split model "
                 "(<name>-00001-of-<count>.gguf) for all its parts",
}


@dataclass(frozen=True)
class GgufReference:
    """A llama.cpp model: a GGUF file (or the parts of a split one) in a Hugging Face repository."""

    repository: str
    files: tuple[str, ...]
    """Paths in the repository, the file the server loads first."""

    @classmethod
    def parse(cls, model: str) -> "GgufReference":
        owner, _, rest = model.partition("/")
        name, _, path = rest.partition("/")
        split = _GGUF_SPLIT.fullmatch(path)
        if split is None:
            return cls(f"{owner}/{name}", (path,))
        count = int(split["count"])
        return cls(f"{owner}/{name}", tuple(f"{split['prefix']}-{index:05d}-of-{count:05d}.gguf"
                                            for index in range(1, count + 1)))


def _gguf_split_problem(model: str) -> Optional[str]:
    split = _GGUF_SPLIT.fullmatch(model)
    if split is None:
        return None
    index, count = int(split["index"]), int(split["count"])
    if count < 1 or not 1 <= index <= count:
        return f"names part {index} of {count}: gguf-split numbers parts from 1 to their count"
    if index != 1:
        return (f"names part {index} of {count} of a split model: llama.cpp loads a split model from its first part "
                f"(use {split['prefix']}-00001-of-{split['count']}.gguf; the stack downloads every part)")
    return None


# Where vLLM and llama.cpp download weights unless a mirror is configured (`model_hub`).
DEFAULT_MODEL_HUB = "https://huggingface.co"
# getpass.getuser()'s answer for the engine's passwd-less UID.
ENGINE_USER_NAME = "model-runner"


def _sh(script: str) -> tuple[str, ...]:
    return ("sh", "-ec", script)


def _docker_model_runner(model: str, port: int, hub: str):
    store = f"{CACHE_MOUNT_PATH}/docker-model-runner"
    pull = _sh(
        f'until curl -fsS "http://127.0.0.1:{port}/models" >/dev/null; do sleep 2; done\n'
        f'curl -fsS -X POST "http://127.0.0.1:{port}/models/create" -H "Content-Type: application/json" '
        f'--data "{{\\"from\\": \\"${MODEL_ENV}\\"}}"\n'
        "exec sleep 2147483647"
    )
    return (
        (),
        (),
        {
            "MODEL_RUNNER_PORT": str(port),
            "MODELS_PATH": store,
            # It would otherwise fetch a newer llama.cpp server at run time into its (read-only) working directory:
            # the image's bundled server is the one that was tested and pinned.
            "DISABLE_SERVER_UPDATE": "1",
            MODEL_ENV: model,
        },
        ProbeAction(http_path=f"/engines/v1/models/{model}"),
        PullStep(mode="sidecar", command=pull, image=PULL_SIDECAR_IMAGE),
    )


def _vllm(model: str, port: int, hub: str):
    download = (
        "python3", "-c",
        # huggingface_hub finds the token itself: HF_TOKEN, else the file HF_TOKEN_PATH names.
        "import os; from huggingface_hub import snapshot_download; "
        f"snapshot_download(os.environ['{MODEL_ENV}'])",
    )
    return (
        ("vllm", "serve"),
        (model, "--host", "0.0.0.0", "--port", str(port), "--served-model-name", model),
        {
            "HF_HOME": f"{CACHE_MOUNT_PATH}/huggingface", "HF_HUB_OFFLINE": "1", MODEL_ENV: model,
            # The pod runs as a UID without a passwd entry; torch and vLLM call getpass.getuser(), which reads
            # these before it would fail on the missing entry.
            "USER": ENGINE_USER_NAME, "LOGNAME": ENGINE_USER_NAME,
        },
        ProbeAction(http_path="/v1/models"),
        # The server runs offline so a restart never reaches the hub; the download is the one step that must.
        PullStep(mode="init", command=download, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub}),
    )


def _ollama(model: str, port: int, hub: str):
    pull = _sh(
        "ollama serve & server=$!\n"
        # A server that died never answers: stop waiting (kill -0 fails, and -e ends the step) instead of hanging.
        'until ollama list >/dev/null 2>&1; do kill -0 "$server"; sleep 1; done\n'
        # A model already in the store is served as it is: a registry outage must not keep a restart from serving.
        f'status=0; ollama show "${MODEL_ENV}" >/dev/null 2>&1 || ollama pull "${MODEL_ENV}" || status=$?\n'
        'kill "$server"; exit "$status"'
    )
    return (
        (),
        (),
        {
            "OLLAMA_HOST": f"0.0.0.0:{port}",
            "OLLAMA_MODELS": f"{CACHE_MOUNT_PATH}/ollama",
            # A loaded model stays in memory: the first request after a quiet hour must not pay the load again.
            "OLLAMA_KEEP_ALIVE": "-1",
            MODEL_ENV: model,
        },
        ProbeAction(command=("ollama", "show", model)),
        PullStep(mode="init", command=pull),
    )


def _llama_cpp(model: str, port: int, hub: str):
    reference = GgufReference.parse(model)
    # Keyed by repository too: the same file name in another repository is other weights.
    paths = [(f"{CACHE_MOUNT_PATH}/llama.cpp/{reference.repository}/{file}",
              f"{hub}/{reference.repository}/resolve/main/{file}") for file in reference.files]
    blocks = [_fetch(path, url) for path, url in paths]
    # `exit 0` ends a block whose file is there already: with several files, each block runs in a subshell.
    fetch = _sh(blocks[0] if len(blocks) == 1 else "\n".join(f"(\n{block}\n)" for block in blocks))
    return (
        (),
        # The API port serves the API only: no web UI, and no /slots (it shows other users' prompts). `--metrics`
        # turns on /metrics (requests processing and deferred, token counters), which autoscaling and the dashboard
        # read; it shows counts only, no prompt. A split model loads from its first file, which names the rest.
        ("--host", "0.0.0.0", "--port", str(port), "--model", paths[0][0], "--alias", model, "--no-webui", "--no-slots",
         "--metrics"),
        {MODEL_ENV: model},
        ProbeAction(http_path="/health"),
        PullStep(mode="init", command=fetch),
    )


def _fetch(path: str, url: str) -> str:
    """A shell step that downloads `url` to `path` unless the file is there already."""
    return (
        f"target={shlex.quote(path)}\n"
        'if [ -s "$target" ]; then exit 0; fi\n'
        'mkdir -p "$(dirname "$target")"\n'
        # The token (a mounted file, or the Docker runtime's env) reaches curl on stdin, never in its arguments.
        f'token=$(cat "${{{HF_TOKEN_PATH_ENV}:-/dev/null}}" 2>/dev/null || true); token=${{token:-${{{HF_TOKEN_ENV}:-}}}}\n'
        'if [ -n "$token" ]; then printf \'header = "Authorization: Bearer %s"\\n\' "$token"; fi |\n'
        f'  curl -fL --retry 5 -K - -o "$target.partial" {shlex.quote(url)}\n'
        'mv "$target.partial" "$target"'
    )


# The Docker Model Runner image has no HTTP client; its pull sidecar needs one.
PULL_SIDECAR_IMAGE = "curlimages/curl:8.10.1"

# Default images are pinned to a release tag, never a moving one (`latest`, llama.cpp's `server`), so a pod
# restarted next month runs what was tested. No digest: none could be checked against the publishers'
# registries from here, and a wrong one would stop every pull. Production pins digests itself
# (`runner.image`, `runner.pullSidecarImage`; the config refuses tags there).

_RENDERERS = {
    "docker-model-runner": _docker_model_runner,
    "vllm": _vllm,
    "ollama": _ollama,
    "llama.cpp": _llama_cpp,
}

ENGINES: dict[str, EngineProfile] = {
    profile.name: profile
    for profile in (
        EngineProfile(
            name="docker-model-runner",
            image="docker/model-runner:v1.2.6",
            port=12434,
            api_base_path="/engines/v1",
            liveness_path="/models",
            model_pattern=rf"(?:{REFERENCE_DOMAIN}/)?{REFERENCE_COMPONENT}(?:/{REFERENCE_COMPONENT})*(?::{REFERENCE_TAG})?",
            model_example="ai/smollm2:360M-Q4_K_M",
            # It serves through the llama.cpp server it bundles, which runs 4 slots unless told otherwise.
            default_batch=4,
        ),
        EngineProfile(
            name="vllm",
            http_client="python3",
            image="vllm/vllm-openai:v0.11.0",
            port=8000,
            api_base_path="/v1",
            liveness_path="/health",
            model_pattern=HF_REPOSITORY,
            model_example="Qwen/Qwen2.5-7B-Instruct",
            downloads_from_hub=True,
            needs_gpu=True,
            shared_memory=True,
            api_key_env="VLLM_API_KEY",
            ready_path_with_key="/health",
            metrics_path="/metrics",
            # The API server's default on GPUs below 70 GiB (vllm/engine/arg_utils.py); 1024 above.
            batch_flags=("--max-num-seqs",),
            default_batch=256,
        ),
        EngineProfile(
            name="ollama",
            image="ollama/ollama:0.12.6",
            port=11434,
            api_base_path="/v1",
            liveness_path="/",
            model_pattern=_OLLAMA_NAME,
            model_example="llama3.2:3b",
            batch_env="OLLAMA_NUM_PARALLEL",
        ),
        EngineProfile(
            name="llama.cpp",
            http_client="curl",
            image="ghcr.io/ggml-org/llama.cpp:server-b7010",
            port=8080,
            api_base_path="/v1",
            liveness_path="/health",
            model_pattern=rf"{HF_REPOSITORY}/(?:{_FILE_SEGMENT}/)*{_FILE_SEGMENT}\.gguf",
            model_rule=_gguf_split_problem,
            model_example="bartowski/SmolLM2-360M-Instruct-GGUF/SmolLM2-360M-Instruct-Q4_K_M.gguf",
            downloads_from_hub=True,
            api_key_env="LLAMA_API_KEY",
            metrics_path="/metrics",
            # Slots: -np auto is 4 since llama.cpp's unified KV cache (b6800-ish, ggml-org/llama.cpp#16736).
            batch_flags=("-np", "--parallel"),
            batch_env="LLAMA_ARG_N_PARALLEL",
            default_batch=4,
        ),
    )
}


def docker_health_test(engine: EngineContainer) -> Optional[list[str]]:
    """The model-ready check as a Docker HEALTHCHECK test, run inside the engine's container; None when the
    image has no HTTP client to ask with (Docker Model Runner)."""
    ready = engine.model_ready
    if ready.command:
        return ["CMD", *ready.command]
    url = f"http://127.0.0.1:{engine.port}{ready.http_path}"
    if engine.http_client == "curl":
        return ["CMD", "curl", "-fsS", "-o", "/dev/null", url]
    if engine.http_client == "python3":
        return ["CMD", "python3", "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)", url]
    return None


def render_profile(
    engine: str,
    model: str,
    *,
    image: Optional[str] = None,
    port: Optional[int] = None,
    api_base_path: Optional[str] = None,
    liveness_path: Optional[str] = None,
    ready_path: Optional[str] = None,
    model_hub: Optional[str] = None,
) -> EngineContainer:
    """An engine's profile rendered for `model`, with whatever the user overrides."""
    overrides = {"image": image, "port": port, "api_base_path": api_base_path, "liveness_path": liveness_path}
    profile = dataclasses.replace(ENGINES[engine], **{key: value for key, value in overrides.items() if value is not None})
    rendered = profile.render(model, model_hub=model_hub)
    if ready_path is not None:
        rendered = dataclasses.replace(rendered, model_ready=ProbeAction(http_path=ready_path))
    return rendered

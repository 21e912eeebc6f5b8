"""Promise: a model reference follows its engine's own grammar (Docker Model Runner's OCI references, Hugging Face
repository ids for vLLM, Ollama's names with its Hugging Face form, GGUF files anywhere in a repository for
llama.cpp); no grammar admits a path segment that would leave the cache directory or the URL it names; and what
cannot be known from an image (the build behind a bare digest) is left to the user."""

import pytest

from components.engines import ENGINES
from harness import assert_rejected, evaluate

DIGEST = "sha256:" + "1" * 64
LLAMA = "bartowski/SmolLM2-360M-Instruct-GGUF"
EXISTING = {"cluster.provider": "existing", "cluster.existing.stackReference": "org/platform/prod"}


def engine(name, model, **more):
    return {"models.chat.engine": name, "models.chat.model": model, **more}


REFUSED = [
    # (stack, overrides, key, text; the value given is the model): escaping the cache through `..`, `.`, empty segments or an absolute path
    ("dev", engine("llama.cpp", "bartowski/../SmolLM2.gguf"), "models.chat.model", "llama.cpp model"),
    ("dev", engine("llama.cpp", "../SmolLM2-360M-Instruct-GGUF/SmolLM2.gguf"), "models.chat.model", "<owner>/<repository>"),
    ("dev", engine("llama.cpp", "./SmolLM2-360M-Instruct-GGUF/SmolLM2.gguf"), "models.chat.model", "llama.cpp model"),
    ("dev", engine("llama.cpp", f"{LLAMA}/SmolLM2-00002-of-00003.gguf"), "models.chat.model", "-00001-of-00003.gguf"),
    ("dev", engine("ollama", "../llama3.2:1b"), "models.chat.model", "[host/][namespace/]model[:tag]"),
    ("dev", engine("ollama", "library/.."), "models.chat.model", "ollama model"),
    ("dev", engine("ollama", "./llama3.2"), "models.chat.model", "ollama model"),
    ("dev", engine("vllm", "Qwen/..", **{"models.chat.gpu.count": 1}), "models.chat.model", "Hugging Face repository"),
    ("dev", engine("vllm", "Qwen/Qwen--2", **{"models.chat.gpu.count": 1}), "models.chat.model", "Hugging Face repository"),
    ("dev", engine("docker-model-runner", "ai/../smollm2"), "models.chat.model", "OCI reference"),
    ("dev", engine("docker-model-runner", "ai//smollm2"), "models.chat.model", "OCI reference"),
    # A CPU tag stays a CPU build when a digest pins it.
    ("dev", engine("llama.cpp", f"{LLAMA}/SmolLM2.gguf", **{"models.chat.gpu.count": 1, "models.chat.image":
                   f"ghcr.io/ggml-org/llama.cpp:server@{DIGEST}", **EXISTING}), "models.chat.gpu.count", "CPU build"),
]


@pytest.mark.parametrize("stack,overrides,key,text", REFUSED, ids=[c[1]["models.chat.model"] for c in REFUSED])
def test_model_references_outside_their_grammar_are_refused(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text, given=overrides[key])


ACCEPTED = [
    ("dev", engine("ollama", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")),
    ("dev", engine("ollama", "huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF")),
    ("dev", engine("ollama", "library/llama3.2:1b")),
    ("dev", engine("llama.cpp", f"{LLAMA}/Q4_K_M/SmolLM2.gguf")),
    ("dev", engine("llama.cpp", f"{LLAMA}/big/SmolLM2-Q8_0-00001-of-00003.gguf")),
    ("dev", engine("llama.cpp", f"{LLAMA}/..SmolLM2.gguf")),  # dots inside a segment leave nowhere
    ("dev", engine("docker-model-runner", "hf.co/bartowski/smollm2-gguf")),
    # A digest alone says nothing about the build: gpu.count is taken as set.
    ("prod", engine("llama.cpp", f"{LLAMA}/SmolLM2.gguf", **{"models.chat.image": f"ghcr.io/ggml-org/llama.cpp@{DIGEST}"})),
    ("local", {"runner.image": f"ghcr.io/ggml-org/llama.cpp@{DIGEST}", "docker.runner.gpus": "all"}),
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[str(next(reversed(c[1].values()))) for c in ACCEPTED])
def test_model_references_in_their_grammar_are_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_a_gguf_in_a_repository_folder_is_fetched_from_that_folder():
    rendered = ENGINES["llama.cpp"].render(f"{LLAMA}/Q4_K_M/SmolLM2.gguf")
    assert f"/models/llama.cpp/{LLAMA}/Q4_K_M/SmolLM2.gguf" in rendered.args
    assert f"https://huggingface.co/{LLAMA}/resolve/main/Q4_K_M/SmolLM2.gguf" in rendered.pull.command[-1]


def test_every_part_of_a_split_gguf_is_fetched_and_the_first_is_loaded():
    rendered = ENGINES["llama.cpp"].render(f"{LLAMA}/big/M-00001-of-00003.gguf")
    assert rendered.args[rendered.args.index("--model") + 1] == f"/models/llama.cpp/{LLAMA}/big/M-00001-of-00003.gguf"
    script = rendered.pull.command[-1]
    for part in (1, 2, 3):
        assert f"https://huggingface.co/{LLAMA}/resolve/main/big/M-0000{part}-of-00003.gguf" in script
        assert f"target=/models/llama.cpp/{LLAMA}/big/M-0000{part}-of-00003.gguf" in script

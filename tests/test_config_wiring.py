"""Promise: settings that would break the stack's own wiring are refused with the supported alternative, and
the near misses that leave the wiring alone are accepted."""

import pytest

from harness import assert_rejected, evaluate, evaluate_failure

VLLM = {"models.chat.engine": "vllm", "models.chat.model": "Qwen/Qwen2.5-0.5B-Instruct", "models.chat.gpu.count": 1}
CUDA_LLAMA = "ghcr.io/ggml-org/llama.cpp:server-cuda"

REFUSED = [
    ("prod", {"models.chat.args": ["--port", "9000"]}, "models.chat.args[0]", "models.chat.port"),
    ("prod", {"models.chat.args": ["--host=127.0.0.1"]}, "models.chat.args[0]", "address"),
    ("dev", {"models.chat.engine": "llama.cpp", "models.chat.model": "a/b/c.gguf", "models.chat.args": ["--api-prefix", "/api"]},
     "models.chat.args[0]", "models.chat.apiBasePath"),
    ("dev", {"models.chat.env.MODEL_RUNNER_PORT": "9999"}, "models.chat.env.MODEL_RUNNER_PORT", "models.chat.port"),
    ("dev", {"models.chat.engine": "ollama", "models.chat.model": "llama3.2:1b", "models.chat.env.OLLAMA_HOST": "127.0.0.1"},
     "models.chat.env.OLLAMA_HOST", "models.chat.port"),
    ("local", {"docker.gateway.env.GATEWAY_UPSTREAM_BASE_URL": "http://elsewhere:80/v1"},
     "docker.gateway.env.GATEWAY_UPSTREAM_BASE_URL", "runner.port or runner.apiBasePath"),
    ("local", {"docker.gateway.env.GATEWAY_PORT": 9000}, "docker.gateway.env.GATEWAY_PORT", "docker.gateway.ports"),
    ("local", {"runner.gpu.count": 1}, "runner.gpu.count", "CPU build"),
    ("local", {"docker.runner.gpus": "all"}, "docker.runner.gpus", "CPU build"),
    ("dev", {"models.chat.gpu.count": 1, "cluster.provider": "existing", "cluster.existing.stackReference": "org/platform/prod"},
     "models.chat.gpu.count", "CPU build"),
    ("dev", {"models.chat.image": CUDA_LLAMA, "models.chat.engine": "llama.cpp", "models.chat.model": "a/b/c.gguf", "models.chat.gpu.count": 1},
     "models.chat.gpu.count", "kind"),
    ("prod", {"models.chat.engine": "ollama", "models.chat.model": "llama3.2:1b", "models.chat.image": "ollama/ollama:0.12.6@sha256:" + "0" * 64,
              "models.chat.gpu.count": 0, "models.chat.gpu.nodeSelector": {"gpu": "a10"}}, "models.chat.gpu.nodeSelector", "gpu.count is 0"),
    ("dev", {"models.chat.gpu.runtimeClassName": "nvidia"}, "models.chat.gpu.runtimeClassName", "gpu.count is 0"),
    ("dev", {"gateway.workload": "deployment", "gateway.scaling": {"minReplicas": 1, "maxReplicas": 2},
             "knative.domain": "models.example.com"}, "knative.domain", "does not install"),
    ("local", {"knative.domain": "models.example.com"}, "knative.domain", "Kubernetes runtime only"),
    ("local", {"knative.install": True}, "knative.install", "Kubernetes runtime only"),
    ("dev", {"knative.scaleToZero": False}, "knative.scaleToZero", "gateway.scaling.minReplicas"),
    ("dev", {"knative.kourierVersion": "1.14.0"}, "knative.kourierVersion", "1.15.2"),
    ("dev", {"models.chat.scaling.targetConcurrency": 8}, "models.chat.scaling.targetConcurrency", "Knative workloads"),
    ("dev", {"gateway.scaling.targetCpuUtilization": 60}, "gateway.scaling.targetCpuUtilization", "Deployment workloads"),
]


@pytest.mark.parametrize("stack,overrides,key,text", REFUSED, ids=[f"{c[0]}-{c[2]}" for c in REFUSED])
def test_settings_that_break_the_wiring_are_refused(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text)


def test_an_env_file_overriding_the_gateways_upstream_is_refused(tmp_path):
    env_file = tmp_path / "gateway.env"
    env_file.write_text("GATEWAY_LOG_LEVEL=debug\nGATEWAY_UPSTREAM_BASE_URL=http://elsewhere/v1\n")
    assert_rejected("local", {"docker.gateway.envFiles": [str(env_file)]}, "docker.gateway.envFiles[0]",
                    "GATEWAY_UPSTREAM_BASE_URL")


ACCEPTED = [
    ("prod", {"models.chat.args": ["--max-model-len=8192", "--served-model-name-extra=x"]}),
    ("dev", {"models.chat.port": 9000}),
    ("dev", {"models.chat.env.MODEL_RUNNER_LOG_LEVEL": "debug"}),
    ("local", {"docker.gateway.env.GATEWAY_LOG_LEVEL": "debug"}),
    ("prod", {"models.chat.engine": "llama.cpp", "models.chat.model": "a/b/c.gguf", "models.chat.image": f"{CUDA_LLAMA}@sha256:{'1' * 64}"}),
    ("dev", {"knative.install": True, "gateway.workload": "deployment", "gateway.scaling": {"minReplicas": 1},
             "knative.domain": "models.example.com"}),
    ("dev", {"knative.scaleToZero": False, "gateway.scaling": {"minReplicas": 1, "maxReplicas": 2}}),
    ("dev", {"knative.kourierVersion": "1.15.0"}),
    ("dev", {"gateway.scaling.targetConcurrency": 20}),
    ("prod", {"models.chat.scaling.signal": "cpu", "models.chat.scaling.targetCpuUtilization": 60}),
]


@pytest.mark.parametrize("stack,overrides", ACCEPTED, ids=[f"{c[0]}-{next(iter(c[1]))}" for c in ACCEPTED])
def test_near_misses_that_keep_the_wiring_are_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_every_wiring_problem_is_reported_at_once():
    error, evaluation = evaluate_failure("dev", set={
        "models.chat.env.MODEL_RUNNER_PORT": "1", "models.chat.gpu.count": 1, "knative.kourierVersion": "1.16.0",
        "knative.scaleToZero": False, "models.chat.scaling.targetConcurrency": 2,
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "models.chat.env.MODEL_RUNNER_PORT", "models.chat.gpu.count", "models.chat.gpu.count", "knative.kourierVersion", "knative.scaleToZero",
        "models.chat.scaling.targetConcurrency",
    ])
    assert evaluation.resources == []

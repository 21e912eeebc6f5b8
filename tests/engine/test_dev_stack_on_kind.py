"""The dev stack on a real kind cluster, through `pulumi up` in the project directory with the project's own
`__main__.py`: the KindCluster component creates the cluster from a node image built here (.ci/kind-node-image),
wires the stack's registry container into the nodes, the gateway is built by docker-build and pushed there, the
engine image is mirrored there through `images.rewrite`, and the nodes pull both by digest. Then what only running
pods show: every pod Ready under the restricted Pod Security Standard, the model pre-pull's file owned by the engine's
user, the official `openai` client answered by the tiny models, the model scaled to zero started by KEDA on the
request the gateway holds for it (the installed Prometheus scraping the gateway, KEDA querying it), NetworkPolicy
enforced, the cached weights surviving a pod restart and a one-setting rollout without a second download, a second
`up` with no changes, a model that cannot load failing the update within its budget with the pod's reason, and
`destroy` removing the cluster and the registry container, after which the next `up` brings it all back.

Where this machine forces a difference from Pulumi.dev.yaml, the config says so in `dev_on_kind_config`:
- `cluster.kind.nodeImage`: kindest/node cannot be pulled here; the image .ci/kind-node-image builds stands in
  (its docstring says how it differs: Debian's containerd 1.6, kube-router for the network, CoreDNS 1.14);
- `cluster.kind.workers`: 1 instead of 2, for the two cores of CI;
- `cluster.kind.*Port`: free ports of this machine; `registryImage`, `registryNetwork` and
  `images.gatewayBuild.baseImage` as in test_dev_image_path.py (images made here; no default bridge network);
  `name` and `registryName` of this test's own, so that no dev stack a user runs on this engine is in its way;
- `models`: the same two models, `chat` scaled from zero by KEDA and `small` always on, served by llama.cpp with an
  engine image made here (lane_images.py) and tiny weights from a model hub this test serves (`modelHub`), instead of
  Docker Model Runner, whose engine image cannot be built here; `imagePullSeconds` is a minute instead of five, as
  for any cluster whose nodes pull from a registry beside them, so the model that cannot load fails sooner;
- `gateway.workload: deployment`: Knative's ingress, Kourier, runs Envoy, which cannot be built here; without
  Knative, kind's mapped host port leads to the gateway itself;
- `metrics.prometheusImage`, `kubeStateMetricsImage`: the installed pipeline's images, made here: Prometheus from the
  toolchain's build of the same release, and a stand-in for kube-state-metrics, whose module the Go module proxy does
  not serve (it answers the probes and exports nothing, so nothing here reads replica series);
- `images.rewrite`, `images.mirror`: the engine, Prometheus and the stand-in live in the lane's registry
  (127.0.0.1:5000), which the nodes cannot reach; a rule makes the stack copy them into its own registry, as a user
  mirrors an upstream engine image. KEDA's release names its images `ghcr.io/kedacore/<name>:<version>`; as a user
  without access to ghcr.io would, the test mirrors KEDA's images (built here from the same release) into the stack's
  registry under `kedacore/` with `images.mirror`, and a rule sends `ghcr.io/kedacore` there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import openai
import pytest

from docker_engine import REGISTRY, docker
from lane_images import KEDA_REPOSITORY
from harness import ROOT, stack_config
from llama_server import write_tiny_llama
from model_hub import ModelHub, serving

sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from loopback import eventually, free_port  # noqa: E402

pytestmark = pytest.mark.docker

NODE_IMAGE_SCRIPT = ROOT / ".ci" / "kind-node-image"
# The model scaled to zero, and the one always running.
CHAT = "engine-lane/tiny-model/chat.gguf"
SMALL = "engine-lane/tiny-model/small.gguf"
API_KEY = "dev-on-kind-key"
NAMESPACE = "models"
ENGINE = "model-runner-small"
CHAT_ENGINE = "model-runner-chat"
LOAD_BUDGET_SECONDS = 180
IMAGE_PULL_SECONDS = 60
FAILING_BUDGET_SECONDS = 30
MAX_TOKENS = 8
# The HorizontalPodAutoscaler controller's sync period (kube-controller-manager's default).
HPA_SYNC_SECONDS = 15


@pytest.fixture(scope="module")
def node_image(toolchain) -> str:
    """The kind node image built here (cached by its inputs); its name."""
    built = subprocess.run([sys.executable, str(NODE_IMAGE_SCRIPT)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"{NODE_IMAGE_SCRIPT} failed:\n{built.stderr[-4000:]}")
    return built.stdout.strip()


@pytest.fixture
def hub(registry_network, llama_server_build: Path, tmp_path) -> Iterator[ModelHub]:
    """The hub on the host's address of the registry's network: the pods reach it through their node's default
    route, which ends on this machine; nothing outside it can."""
    for seed, model in enumerate((CHAT, SMALL), start=3):
        weights = tmp_path / "hub" / weights_path(model).lstrip("/")
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_llama(weights, llama_server_build, seed=seed)
    [ipam] = json.loads(docker("network", "inspect", "--format", "{{json .IPAM.Config}}", registry_network).stdout)
    with serving(tmp_path / "hub", ipam["Gateway"]) as server:
        yield server


def registry_name(cluster_name: str) -> str:
    return f"{cluster_name}-registry"


def weights_path(model: str) -> str:
    """The hub path the pre-pull fetches `model` from."""
    repository, _, file = model.rpartition("/")
    return f"/{repository}/resolve/main/{file}"


def dev_on_kind_config(name: str, node_image: str, registry_image: str, registry_network: str, lane: dict[str, str],
                       keda_images: dict[str, str], hub_url: str) -> dict:
    """`lane`: the lane's images by role (`gatewayBase`, `engine`, `prometheus`, `kubeStateMetrics`); `keda_images`:
    KEDA's release images -> the same built here."""
    config = stack_config("dev")
    registry_port = free_port()
    config["cluster"]["kind"] = {
        **config["cluster"]["kind"], "name": name, "workers": 1, "nodeImage": node_image,
        "httpHostPort": free_port(), "httpsHostPort": free_port(), "registryPort": registry_port,
        "registryImage": registry_image, "registryNetwork": registry_network, "registryName": registry_name(name),
    }
    config["models"] = {
        key: {**config["models"][key], "engine": "llama.cpp", "model": model, "image": lane["engine"],
              "modelHub": hub_url, "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                 "limits": {"memory": "512Mi"}},
              "cache": {"size": "1Gi", "accessMode": "ReadWriteOnce"}, "loadBudgetSeconds": LOAD_BUDGET_SECONDS,
              "imagePullSeconds": IMAGE_PULL_SECONDS}
        for key, model in (("chat", CHAT), ("small", SMALL))}
    config["gateway"] = {**config["gateway"], "workload": "deployment", "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    config["metrics"] = {"prometheusImage": lane["prometheus"], "kubeStateMetricsImage": lane["kubeStateMetrics"]}
    keda = f"localhost:{registry_port}/kedacore"
    config["images"] = {
        "rewrite": {REGISTRY: f"localhost:{registry_port}/lane", KEDA_REPOSITORY: keda, "ghcr.io/kedacore": keda},
        "mirror": sorted(keda_images.values()),
        "gatewayBuild": {"baseImage": lane["gatewayBase"]},
    }
    return config


class Cluster:
    def __init__(self, name: str, directory: Path, env: dict[str, str]):
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text(subprocess.run(["kind", "get", "kubeconfig", "--name", name], env=env,
                                                  capture_output=True, text=True, check=True).stdout)
        self.env = env

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def probe(self, namespace: str, url: str, image: str) -> str:
        """`curl url` from a pod of `namespace`, under the restricted standard: the HTTP status it got, `000` for
        no answer."""
        name = f"probe-{uuid.uuid4().hex[:6]}"
        overrides = {"spec": {"restartPolicy": "Never", "containers": [{
            "name": name, "image": image, "command": ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                                                      url],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        }]}}
        return self.kubectl("run", name, "-n", namespace, "--rm", "-i", "--quiet", f"--image={image}",
                            f"--overrides={json.dumps(overrides)}", "--command", "--", "true").stdout.split()[-1]


def client(base_url: str, timeout: float = 60) -> openai.OpenAI:
    # No retries: a 5xx is a defect here that must show.
    return openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, model: str = SMALL, **fields):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say something."}],
                                          max_tokens=MAX_TOKENS, temperature=0, **fields)


def ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"]["phase"] == "Running" and conditions.get("Ready") == "True"


def test_the_dev_stack_runs_on_kind_and_answers_through_the_gateway(
        project, toolchain, node_image, buildkit_image, registry_image, registry_network, gateway_base_image,
        engine_image_digest, prometheus_image, kube_state_metrics_image, keda_images, hub, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    name = f"lane-{suffix}"
    lane = {"gatewayBase": gateway_base_image, "engine": engine_image_digest, "prometheus": prometheus_image,
            "kubeStateMetrics": kube_state_metrics_image}
    config = dev_on_kind_config(name, node_image, registry_image, registry_network, lane, keda_images, hub.url)
    stack = project().stack(f"dev-kind-{suffix}", config, secrets={"gatewayApiKeys": API_KEY})
    env = {**stack.project.env}
    started = time.monotonic()
    try:
        assert "create" in stack.up()
        cluster = Cluster(name, tmp_path, env)
        up_seconds = time.monotonic() - started

        # Every pod the stack runs is Ready, those of the models namespace admitted under the restricted Pod Security
        # Standard; `chat` is at zero replicas until a request for it comes.
        labels = cluster.json("get", "namespace", NAMESPACE)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        pods = cluster.json("get", "pods", "-n", NAMESPACE)["items"]
        assert {pod["metadata"]["labels"].get("app.kubernetes.io/name") for pod in pods} == {"gateway", ENGINE}
        for namespace in (NAMESPACE, "monitoring", "keda"):
            for pod in cluster.json("get", "pods", "-n", namespace)["items"]:
                assert ready(pod), (namespace, pod["metadata"]["name"], pod["status"])
        # The nodes pulled the gateway and the engine from the stack's registry, by digest.
        images = {container["image"] for pod in pods for container in pod["spec"]["containers"]}
        port = config["cluster"]["kind"]["registryPort"]
        assert any(image.startswith(f"localhost:{port}/model-gateway") for image in images), images
        assert any(image.startswith(f"localhost:{port}/lane/") for image in images), images

        # The pre-pull wrote the weights once, as the engine's user, into the cache volume.
        [engine] = [pod for pod in pods if pod["metadata"]["labels"].get("app.kubernetes.io/name") == ENGINE]
        user = engine["spec"]["securityContext"]["runAsUser"]
        owner = cluster.kubectl("exec", "-n", NAMESPACE, engine["metadata"]["name"], "-c", "engine", "--",
                                "stat", "-c", "%u %s", f"/models/llama.cpp/{SMALL}").stdout.split()
        assert owner[0] == str(user) and int(owner[1]) > 0, owner
        assert hub.fetched.count(weights_path(SMALL)) == 1 and weights_path(CHAT) not in hub.fetched, hub.fetched

        # The official client, through the host port kind maps to the gateway: plain and streamed answers from the
        # model's own engine.
        base_url = stack.outputs()["gatewayPublicUrl"]
        assert base_url == f"http://127.0.0.1:{config['cluster']['kind']['httpHostPort']}/v1"
        with client(base_url) as everyone:
            assert sorted(model.id for model in everyone.models.list()) == sorted([CHAT, SMALL])
            plain = chat(everyone)
            first_token = time.monotonic() - started
            assert plain.model == SMALL and plain.choices[0].message.content
            chunks = list(chat(everyone, stream=True))
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
            assert streamed == plain.choices[0].message.content
        print(f"pulumi up {up_seconds:.0f}s; pulumi up to first token, cold (cluster included): {first_token:.0f}s")

        # Scale from zero: the gateway holds the request for `chat`, the installed Prometheus scrapes the gateway's
        # waiting count, KEDA's ScaledObject activates on it and starts a replica, and the held request is answered.
        assert cluster.json("get", "deployment", "-n", NAMESPACE, CHAT_ENGINE)["spec"]["replicas"] == 0
        held = time.monotonic()
        with client(base_url, timeout=LOAD_BUDGET_SECONDS + 30) as everyone:
            answer = chat(everyone, CHAT)
        assert answer.model == CHAT and answer.choices[0].message.content
        print(f"a request for a model at zero replicas answered in {time.monotonic() - held:.0f}s")
        scaled = cluster.json("get", "scaledobject", "-n", NAMESPACE, CHAT_ENGINE)
        conditions = {c["type"]: c["status"] for c in scaled["status"]["conditions"]}
        assert conditions["Ready"] == "True", scaled["status"]
        hpa = cluster.json("get", "hpa", "-n", NAMESPACE, scaled["status"]["hpaName"])
        assert hpa["spec"]["scaleTargetRef"]["name"] == CHAT_ENGINE, hpa["spec"]

        # With a replica running, the HorizontalPodAutoscaler reads the model's load through KEDA's metrics server
        # (the external metrics API, answering from the same Prometheus query): what scales it beyond one replica.
        def scaling_active() -> dict:
            hpa = cluster.json("get", "hpa", "-n", NAMESPACE, scaled["status"]["hpaName"])
            return next((c for c in hpa["status"].get("conditions", []) if c["type"] == "ScalingActive"), {})

        eventually(lambda: scaling_active().get("reason") == "ValidMetricFound", HPA_SYNC_SECONDS * 6,
                   interval=HPA_SYNC_SECONDS / 3)
        active = scaling_active()
        assert active.get("status") == "True" and active.get("reason") == "ValidMetricFound", active
        assert cluster.json("get", "deployment", "-n", NAMESPACE, CHAT_ENGINE)["status"]["readyReplicas"] == 1
        assert hub.fetched.count(weights_path(CHAT)) == 1, hub.fetched

        # NetworkPolicy, enforced by the nodes: a pod of another namespace reaches the gateway, not the engine.
        engine_image = next(image for image in images if image.startswith(f"localhost:{port}/lane/"))
        cluster.kubectl("create", "namespace", "lane-probe")
        cluster.kubectl("label", "namespace", "lane-probe", "pod-security.kubernetes.io/enforce=restricted")
        assert cluster.probe("lane-probe", f"http://gateway.{NAMESPACE}:8080/health", engine_image) == "200"
        assert cluster.probe("lane-probe", f"http://{ENGINE}.{NAMESPACE}:8080/health", engine_image) == "000"

        # A restarted engine finds its weights in the cache volume: no second download.
        cluster.kubectl("delete", "pod", "-n", NAMESPACE, engine["metadata"]["name"], "--wait=true")
        cluster.kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{ENGINE}", f"--timeout={LOAD_BUDGET_SECONDS}s",
                        timeout=LOAD_BUDGET_SECONDS + 30)
        assert hub.fetched.count(weights_path(SMALL)) == 1, hub.fetched

        # What Kubernetes and Docker read back shows no diff, KEDA's scaling of `chat` included.
        assert stack.preview("--expect-no-changes") == {}

        # One setting of the model rolls its engine out again; the new pod loads the cached weights.
        config["models"]["small"]["resources"]["limits"]["memory"] = "640Mi"
        stack.write_config(config)
        assert stack.planned_steps() == {ENGINE: "update"}
        rollout_started = time.monotonic()
        stack.up()
        with client(base_url) as everyone:
            assert chat(everyone).choices[0].message.content
        print(f"pulumi up to first token, warm (a one-setting rollout): {time.monotonic() - rollout_started:.0f}s")
        # The replaced pod may still be draining: it stops as its replacement starts, beside it on the one volume.
        [engine] = [pod for pod in cluster.json("get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/name={ENGINE}")[
            "items"] if "deletionTimestamp" not in pod["metadata"]]
        assert engine["spec"]["containers"][0]["resources"]["limits"]["memory"] == "640Mi"
        assert hub.fetched.count(weights_path(SMALL)) == 1, hub.fetched

        # A model that cannot load (the hub has no such file) fails the update within its budget, naming the pod
        # and its failing pull; the rollout's deadline is the load budget and the image pull allowance.
        config["models"]["small"]["model"] = SMALL.replace("small.gguf", "missing.gguf")
        config["models"]["small"]["loadBudgetSeconds"] = FAILING_BUDGET_SECONDS
        stack.write_config(config)
        began = time.monotonic()
        failed = stack.run("up", "--yes", "--skip-preview", check=False)
        elapsed = time.monotonic() - began
        assert failed.returncode != 0, failed.stdout[-3000:]
        assert elapsed < FAILING_BUDGET_SECONDS + IMAGE_PULL_SECONDS + 60, elapsed
        assert ENGINE in failed.stdout and "model-pull" in failed.stdout, failed.stdout[-3000:]

        # `destroy` removes the cluster and the registry container; the next `up` brings the stack back, on a new
        # cluster whose cache volume fetches the weights again.
        config["models"]["small"].update(model=SMALL, loadBudgetSeconds=LOAD_BUDGET_SECONDS)
        stack.write_config(config)
        assert_destroyed(stack, name, env)
        assert "create" in stack.up()
        with client(base_url) as everyone:
            assert chat(everyone).choices[0].message.content
        assert hub.fetched.count(weights_path(SMALL)) == 2, hub.fetched
    finally:
        assert_destroyed(stack, name, env)
        stack.run("stack", "rm", "--yes")


def assert_destroyed(stack, cluster_name: str, env: dict[str, str]) -> None:
    stack.destroy()
    # Retained on delete, by design.
    docker("volume", "rm", "--force", f"{registry_name(cluster_name)}-data", check=False)
    clusters = subprocess.run(["kind", "get", "clusters"], env=env, capture_output=True, text=True).stdout.split()
    assert cluster_name not in clusters
    assert docker("inspect", registry_name(cluster_name), check=False).returncode != 0

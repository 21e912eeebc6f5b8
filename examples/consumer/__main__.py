"""A team's project: an Ollama model in its own namespace of a shared cluster, reachable from one namespace."""

import pulumi
import pulumi_kubernetes as k8s

from model_stack_components.model_runner import ModelRunner

config = pulumi.Config()
cluster = k8s.Provider("shared-cluster", kubeconfig=config.require_secret("kubeconfig"))
namespace = k8s.core.v1.Namespace(
    "team-chat",
    metadata={"name": "team-chat", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    opts=pulumi.ResourceOptions(provider=cluster),
)
runner = ModelRunner(
    "chat-model",
    {
        "namespace": "team-chat",
        "engine": "ollama",
        "model": "llama3.2:3b",
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}},
        "cache": {"size": "20Gi", "access_mode": "ReadWriteOnce", "protect": True},
        "scaling": {"min_replicas": 1, "max_replicas": 1, "target_cpu_utilization": 80, "target_concurrency": 4},
        "load_budget_seconds": 300,
        "probe_period_seconds": 5,
        "allowed_clients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-chat-app"}}}],
    },
    opts=pulumi.ResourceOptions(providers=[cluster], depends_on=[namespace]),
)
pulumi.export("modelUrl", runner.url)

"""The Kubernetes provider every cluster component hands to its consumers."""

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s


def cluster_provider(
    name: str,
    kubeconfig: pulumi.Input[str],
    cluster_identifier: pulumi.Input[str],
    opts: Optional[pulumi.ResourceOptions] = None,
    **settings,
) -> k8s.Provider:
    """A provider for one cluster. `cluster_identifier` says when the objects in it must be created again (a new
    cluster), so new credentials or a new endpoint for the same cluster replace nothing."""
    return k8s.Provider(
        name,
        kubeconfig=kubeconfig,
        cluster_identifier=cluster_identifier,
        # With fixed names (Knative's config-* ConfigMaps, the gateway's keys), a data change would otherwise
        # delete and re-create the object: Knative would run on defaults in between, and pods that mount the
        # Secret would keep the old file until restarted. Updated in place, mounted copies follow within a minute.
        enable_config_map_mutable=True,
        enable_secret_mutable=True,
        opts=opts,
        **settings,
    )

"""Pull credentials for a private registry: a `kubernetes.io/dockerconfigjson` Secret for `imagePullSecrets`."""

import base64
import json
from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s


class RegistryCredentialsArgs(TypedDict):
    secret_name: str
    """Name of the Secret, as pods list it in `imagePullSecrets`."""

    namespace: str
    """Namespace of the pods that pull (a Secret serves only its own namespace)."""

    server: str
    """Registry host (`ghcr.io`, `harbor.example.com`)."""

    username: str
    """User the cluster pulls as (a read-only robot account, not the one CI pushes with)."""

    password: pulumi.Input[str]
    """Its password or token (a Pulumi secret)."""


def docker_config_json(server: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"username": username, "password": password, "auth": auth}}}, sort_keys=True)


class RegistryCredentials(pulumi.ComponentResource):
    """The Secret pods name in `imagePullSecrets` to pull from a private registry."""

    secret_name: pulumi.Output[str]
    """Name of the Secret."""

    def __init__(self, name: str, args: RegistryCredentialsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("model-stack:index:RegistryCredentials", name, None, opts)
        config = pulumi.Output.secret(args["password"]).apply(
            lambda password: docker_config_json(args["server"], args["username"], password)
        )
        secret = k8s.core.v1.Secret(
            name,
            metadata={"name": args["secret_name"], "namespace": args["namespace"]},
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": pulumi.Output.secret(config)},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.secret_name = secret.metadata.name
        self.register_outputs({"secret_name": self.secret_name})

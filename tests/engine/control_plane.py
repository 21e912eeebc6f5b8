"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager, built from their
Go modules by .ci/toolchain.py. No kubelet and no nodes: objects are stored, validated, defaulted, garbage
collected and finalized for real, but no pod ever runs."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import urllib.request
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import yaml
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

SERVICE_CIDR = "10.96.0.0/16"  # only an allocation range for ClusterIPs: nothing is ever routed to it


@dataclass(frozen=True)
class ControlPlane:
    url: str
    token: str
    ca_file: Path
    kubeconfig: Path

    def get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return yaml.safe_load(response.read())


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, stack: ExitStack) -> subprocess.Popen:
    """Starts a process whose output goes to `log`, and stops it by PID when `stack` closes."""
    output = stack.enter_context(log.open("w"))
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    return process


def wait_until_ok(url: str, process: subprocess.Popen, log: Path, seconds: int, **urlopen_args) -> None:
    @retry(stop=stop_after_delay(seconds), wait=wait_fixed(0.5), retry=retry_if_exception_type(OSError),
           reraise=True)
    def probe() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with urllib.request.urlopen(url, timeout=5, **urlopen_args) as response:
            if response.status != 200:
                raise OSError(f"{url} answered {response.status}")

    probe()


def run_control_plane(directory: Path, stack: ExitStack) -> ControlPlane:
    """Starts etcd, the API server and the controller manager (binaries on PATH), all on loopback."""
    directory.mkdir(parents=True, exist_ok=True)
    service_account_key = directory / "service-account.key"
    subprocess.run(["openssl", "genrsa", "-out", str(service_account_key), "2048"], check=True, capture_output=True)
    token = "engine-lane-admin-token"
    (directory / "tokens.csv").write_text(f'{token},engine-lane-admin,1,"system:masters"\n')

    etcd_client, etcd_peer = free_port(), free_port()
    etcd = start([
        "etcd", "--name=engine-lane", f"--data-dir={directory / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_client}", f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-cluster=engine-lane=http://127.0.0.1:{etcd_peer}", "--unsafe-no-fsync",
    ], directory / "etcd.log", stack)
    wait_until_ok(f"http://127.0.0.1:{etcd_client}/health", etcd, directory / "etcd.log", 60)

    port, certificates = free_port(), directory / "certificates"
    apiserver = start([
        "kube-apiserver", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
        f"--etcd-servers=http://127.0.0.1:{etcd_client}", f"--cert-dir={certificates}",
        f"--token-auth-file={directory / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
        f"--service-account-key-file={service_account_key}",
        f"--service-account-signing-key-file={service_account_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount",
    ], directory / "kube-apiserver.log", stack)
    ca_file = certificates / "apiserver.crt"  # self-signed by the API server for 127.0.0.1 and localhost
    wait_until_ok(f"https://127.0.0.1:{port}/readyz", apiserver, directory / "kube-apiserver.log", 120,
                  context=ssl._create_unverified_context())  # the certificate is written while it starts

    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "engine-lane",
        "clusters": [{"name": "engine-lane", "cluster": {
            "server": f"https://127.0.0.1:{port}", "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "engine-lane", "context": {"cluster": "engine-lane", "user": "admin"}}],
    }))
    start([
        "kube-controller-manager", f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
        f"--service-account-private-key-file={service_account_key}", f"--root-ca-file={ca_file}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*",
    ], directory / "kube-controller-manager.log", stack)
    return ControlPlane(f"https://127.0.0.1:{port}", token, ca_file, kubeconfig)

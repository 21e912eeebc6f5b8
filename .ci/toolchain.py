"""Builds, from Go modules, the real tools the engine lane runs, at the versions this project installs.

    .venv/bin/python .ci/toolchain.py            # build what is missing, install the plugins, print a summary
    .venv/bin/python .ci/toolchain.py --env      # only print the environment the tests use (PATH, PULUMI_HOME, ...)

What it builds and from which module (`go mod download`, then `go build` from a copy, because each of these
modules' go.mod replaces its sibling modules with relative paths, which `go install module@version` refuses):

- the Pulumi CLI (`github.com/pulumi/pulumi/pkg/v3`, with `sdk/v3` beside it) at the version of the installed
  `pulumi` Python SDK;
- every resource plugin whose installed Python SDK declares it (`pulumi-plugin.json`), installed with
  `pulumi plugin install resource NAME VERSION --file BINARY`, so the engine never downloads one; `docker` is not
  pulumi-docker's own build (the proxy does not serve it) but the upstream Terraform provider bridged by our small
  module in .ci/docker-provider (see BRIDGED_PROVIDERS);
- kube-apiserver and kube-controller-manager (`k8s.io/kubernetes`, its staging modules taken from their published
  `k8s.io/*` v0.X.Y twins) at the Kubernetes version the stacks pin, and etcd at the release that version is
  tested with (`build/dependencies.yaml` of that Kubernetes module);
- cosign (`github.com/sigstore/cosign/v2`), which signs and verifies images and their attestations: the engine
  lane signs with it, and a stack with `images.signing` runs it after every push;
- syft (`github.com/anchore/syft`), which writes the SPDX SBOM that a stack with `images.signing.attestations.sbom`
  attests for every pushed image, reading the image from its registry.

Everything is cached by version under ~/.cache/model-stack-toolchain (override: MODEL_STACK_TOOLCHAIN); a second
run builds nothing. A plugin whose module the Go module proxy does not serve is reported, not faked: the lane
then covers what the built plugins allow (see KNOWN_UNBUILDABLE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

CACHE = Path(os.environ.get("MODEL_STACK_TOOLCHAIN", Path.home() / ".cache" / "model-stack-toolchain"))
BIN = CACHE / "bin"
PULUMI_HOME = CACHE / "pulumi-home"

# The stacks' default `cluster.kubernetesVersion` is 1.32 (kind's node image v1.32.8). The proxy does not serve
# the 1.32.8 release of the staging module k8s.io/kube-controller-manager, so the control plane is the next patch
# release of the same minor.
KUBERNETES_VERSION = "1.32.9"

# The cosign release the stack's signing commands are written against (its v2 flags: --tlog-upload,
# --insecure-ignore-tlog, --allow-insecure-registry).
COSIGN_VERSION = "v2.6.1"

# The syft release whose `scan registry:<image>` and SYFT_REGISTRY_* settings the attestation script uses.
SYFT_VERSION = "v1.57.1"

# Provider modules are tagged at the repository root only, so the proxy knows their provider/ module by
# pseudo-version (commit time and hash of the release tag), not by release number.
PROVIDER_MODULES = {
    "kubernetes": (
        "github.com/pulumi/pulumi-kubernetes/provider/v4",
        {"4.25.0": "v4.0.0-20260115033456-f47bc2d6f199"},
        "./cmd/pulumi-resource-kubernetes",
        "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version={version}",
        "v{version}",
    ),
}

# Terraform-bridged providers whose Pulumi provider module the proxy does not serve, built instead from the upstream
# Terraform provider module that the proxy does serve, through our own small bridge module (name -> its directory,
# the SDK versions whose schema it was checked against). What differs from the real plugin is said in that module.
#
# docker: pulumi-docker (github.com/pulumi/pulumi-docker/provider/v5, 403 at every version) pins upstream
# kreuzwerker/terraform-provider-docker v4.5.0 (commit 5074970c, 403 too, as are the v4.x tags: the upstream module
# path has no /v4); the proxy serves only the later commit 96d331c98ff4 (v4.6.0 plus two months), so the plugin is
# that commit, unpatched, bridged with pulumi-terraform-bridge v3.137.0 (what pulumi-docker pins), its schema
# generated here by tfgen. Against pulumi-docker 5.2.0's schema it adds upstream's newer inputs (Container
# deviceCgroupRules, ContainerUpload owner/group; a healthcheck change replaces the container) and lacks the native
# docker:index/image:Image, which pulumi-docker serves itself (this project builds images with docker-build).
BRIDGED_PROVIDERS = {
    "docker": (Path(__file__).parent / "docker-provider", {"5.2.0"}),
}

# Checked here on 2026-11-29: the Go module proxy these machines reach answers 403 "This module version is not
# available" for every version and release-tag pseudo-version of these modules, so they cannot be built here.
KNOWN_UNBUILDABLE = {
    # EKS and AWS need an AWS account anyway: prod's EKS layer stays under the mocks.
    "aws": "github.com/pulumi/pulumi-aws/provider/v7",
    "eks": "github.com/pulumi/pulumi-eks/provider",
    "command": "github.com/pulumi/pulumi-command/provider",
    "docker-build": "github.com/pulumi/pulumi-docker-build/provider",
    "pulumi-language-python": "github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3",
}


def log(message: str) -> None:
    print(f"toolchain: {message}", file=sys.stderr, flush=True)


@dataclass
class GoBuild:
    """One `go build` of a package from a downloaded module, its relative `replace` targets laid beside it."""

    name: str
    module: str
    version: str
    packages: dict[str, str]  # binary name -> package path inside the module
    sibling_version: str  # version of every module the go.mod replaces with a relative path
    ldflags: str = ""
    generate_in: list[str] = field(default_factory=list)  # packages whose go:generate must run first
    env: dict[str, str] = field(default_factory=dict)
    source: Path | None = None  # a module of this repository to build instead of the downloaded module@version

    @property
    def stamp(self) -> Path:
        return CACHE / "built" / f"{self.name}-{self.version}"

    def outputs(self) -> list[Path]:
        return [CACHE / "versions" / self.name / self.version / binary for binary in self.packages]

    def build(self) -> float:
        if self.stamp.exists() and all(path.exists() for path in self.outputs()):
            return 0.0
        started = time.monotonic()
        log(f"building {self.name} {self.version} from {self.module}@{self.version}")
        with tempfile.TemporaryDirectory(prefix=f"toolchain-{self.name}-") as work:
            # Deep enough that replace targets such as ../../../../pkg stay inside the work tree.
            main = Path(work, "a", "b", "c", "d", "main")
            copy_module(self.source or download(self.module, self.version), main)
            for old_path, target in relative_replaces(main):
                try:
                    copy_module(download(old_path, self.sibling_version), (main / target).resolve())
                except ModuleNotServed as error:
                    # Only a module that none of the built packages imports can go (k8s.io/kubernetes's sample-*
                    # staging modules): `go build` below fails loudly if a package needs it after all.
                    log(f"{error}; dropping it from the build")
                    run(["go", "mod", "edit", f"-dropreplace={old_path}", f"-droprequire={old_path}"], cwd=main)
            # GOWORK=off: k8s.io/kubernetes ships a go.work naming its staging tree; the copies laid beside it by the
            # replace directives are what the build uses.
            env = {**os.environ, "GOFLAGS": "-mod=mod", "GOWORK": "off", "CGO_ENABLED": "0", **self.env}
            for package in self.generate_in:
                run(["go", "generate", package], cwd=main, env=env)
            out_dir = CACHE / "versions" / self.name / self.version
            out_dir.mkdir(parents=True, exist_ok=True)
            for binary, package in self.packages.items():
                run(["go", "build", "-trimpath", "-ldflags", self.ldflags, "-o", str(out_dir / binary), package],
                    cwd=main, env=env)
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        self.stamp.touch()
        return time.monotonic() - started


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"toolchain: `{' '.join(command)}` failed:\n{result.stderr[-4000:]}")
    return result.stdout


class ModuleNotServed(Exception):
    pass


def download(module: str, version: str) -> Path:
    result = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                            env={**os.environ, "GOFLAGS": "-mod=mod"})
    info = json.loads(result.stdout or "{}")
    if "Error" in info or result.returncode != 0:
        raise ModuleNotServed(f"the Go module proxy does not serve {module}@{version}: "
                              f"{info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


def copy_module(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, copy_function=shutil.copy)
    for path in [destination, *destination.rglob("*")]:  # the module cache is read-only
        path.chmod(path.stat().st_mode | 0o200)


def relative_replaces(module_dir: Path) -> list[tuple[str, str]]:
    edits = json.loads(run(["go", "mod", "edit", "-json"], cwd=module_dir))
    return [
        (replace["Old"]["Path"], replace["New"]["Path"])
        for replace in edits.get("Replace") or []
        if replace["New"]["Path"].startswith(".")
    ]


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in {"schema.json", "Pulumi.yaml"}):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def sdk_plugins() -> dict[str, str]:
    """Resource plugins (name -> version) that the installed Pulumi SDK packages declare."""
    plugins = {}
    for distribution in metadata.distributions():
        for file in distribution.files or []:
            if file.name == "pulumi-plugin.json":
                declared = json.loads(file.read_text())
                if declared.get("resource"):
                    plugins[declared["name"]] = declared["version"].lstrip("v")
    return plugins


def etcd_version(kubernetes_dir: Path) -> str:
    text = (kubernetes_dir / "build" / "dependencies.yaml").read_text()
    match = re.search(r'- name: "etcd"\s+version: ([0-9.]+)', text)
    if not match:
        raise SystemExit("toolchain: no etcd version in k8s.io/kubernetes build/dependencies.yaml")
    return match.group(1)


def builds() -> tuple[list[GoBuild], dict[str, str], list[str]]:
    pulumi_version = metadata.version("pulumi")
    cli = GoBuild(
        "pulumi", "github.com/pulumi/pulumi/pkg/v3", f"v{pulumi_version}", {"pulumi": "./cmd/pulumi"},
        sibling_version=f"v{pulumi_version}",
        ldflags=f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{pulumi_version}",
    )
    plan = [cli]
    plugins, missing = {}, []
    for name, version in sorted(sdk_plugins().items()):
        if name in BRIDGED_PROVIDERS:
            source, checked = BRIDGED_PROVIDERS[name]
            if version not in checked:
                missing.append(f"{name} {version}: its bridge module {source.name} was checked against "
                               f"{sorted(checked)}")
                continue
            binary = f"pulumi-resource-{name}"
            plan.append(GoBuild(
                # Cached by the plugin version and the bridge module's own files, so an edit there rebuilds.
                binary, f"{source.name} (local)", f"v{version}-{tree_digest(source)}", {binary: f"./cmd/{binary}"},
                sibling_version="", ldflags=f"-X main.version={version}", generate_in=[f"./cmd/{binary}"],
                env={"VERSION": version}, source=source,
            ))
            plugins[name] = version
            continue
        if name not in PROVIDER_MODULES:
            missing.append(f"{name} {version}: " + (
                f"its module {KNOWN_UNBUILDABLE[name]} is not served by the Go module proxy"
                if name in KNOWN_UNBUILDABLE else "no provider module is known for it"))
            continue
        module, versions, package, ldflags, siblings = PROVIDER_MODULES[name]
        if version not in versions:
            missing.append(f"{name} {version}: the proxy serves {module} only at the releases {sorted(versions)}")
            continue
        binary = f"pulumi-resource-{name}"
        plan.append(GoBuild(
            binary, module, versions[version], {binary: package}, sibling_version=siblings.format(version=version),
            ldflags=ldflags.format(version=version), generate_in=[package], env={"VERSION": version},
        ))
        plugins[name] = version
    k8s_ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}" for key, value in {
            "gitVersion": f"v{KUBERNETES_VERSION}", "gitMajor": KUBERNETES_VERSION.split(".")[0],
            "gitMinor": KUBERNETES_VERSION.split(".")[1], "gitTreeState": "clean",
        }.items())
    kubernetes = GoBuild(
        "kube-control-plane", "k8s.io/kubernetes", f"v{KUBERNETES_VERSION}",
        {"kube-apiserver": "./cmd/kube-apiserver", "kube-controller-manager": "./cmd/kube-controller-manager"},
        sibling_version="v0." + KUBERNETES_VERSION.split(".", 1)[1], ldflags=k8s_ldflags,
    )
    etcd = f"v{etcd_version(download(kubernetes.module, kubernetes.version))}"
    plan += [kubernetes, GoBuild("etcd", "go.etcd.io/etcd/server/v3", etcd, {"etcd": "."}, sibling_version=etcd)]
    plan.append(GoBuild(
        "cosign", "github.com/sigstore/cosign/v2", COSIGN_VERSION, {"cosign": "./cmd/cosign"},
        sibling_version=COSIGN_VERSION, ldflags=f"-X sigs.k8s.io/release-utils/version.gitVersion={COSIGN_VERSION}",
    ))
    plan.append(GoBuild(
        "syft", "github.com/anchore/syft", SYFT_VERSION, {"syft": "./cmd/syft"},
        sibling_version=SYFT_VERSION, ldflags=f"-X main.version={SYFT_VERSION.lstrip('v')}",
    ))
    return plan, plugins, missing


def environment() -> dict[str, str]:
    return {
        "MODEL_STACK_TOOLCHAIN": str(CACHE),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(PULUMI_HOME),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="store_true", help="print the environment the tests use and exit")
    if parser.parse_args().env:
        for key, value in environment().items():
            print(f"export {key}={value}")
        return
    try:
        build_all()
    except ModuleNotServed as error:
        raise SystemExit(f"toolchain: {error}")


def build_all() -> None:
    if not shutil.which("go"):
        raise SystemExit("toolchain: Go is required (https://go.dev/doc/install)")
    started = time.monotonic()
    plan, plugins, missing = builds()
    BIN.mkdir(parents=True, exist_ok=True)
    for build in plan:
        seconds = build.build()
        log(f"{build.name} {build.version}: " + (f"built in {seconds:.0f}s" if seconds else "cached"))
        for output in build.outputs():
            link = BIN / output.name
            if link.is_symlink() and Path(os.readlink(link)) == output:
                continue
            # Swapped in atomically: an engine lane running meanwhile never finds the tool missing.
            staged = BIN / f".{output.name}.new"
            staged.unlink(missing_ok=True)
            staged.symlink_to(output)
            os.replace(staged, link)
    env = {**os.environ, **environment()}
    for name, version in plugins.items():
        installed = PULUMI_HOME / "plugins" / f"resource-{name}-v{version}"
        binary = BIN / f"pulumi-resource-{name}"
        # The build the link points to (its directory names the build's version) is what is installed: a rebuilt
        # binary at the same plugin version (a bridge module edited) replaces the installed one, and an unchanged
        # one costs no read of either binary.
        build = os.readlink(binary)
        marker = installed / ".model-stack-build"
        if not marker.is_file() or marker.read_text() != build:
            run(["pulumi", "plugin", "install", "resource", name, version, "--file", str(binary), "--reinstall"],
                env=env)
            marker.write_text(build)
        log(f"plugin {name} {version}: installed in {installed}")
    for line in missing:
        log(f"not built: {line}")
    log(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()

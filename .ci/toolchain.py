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
  attests for every pushed image, reading the image from its registry;
- the kind CLI (`sigs.k8s.io/kind`) at the release stacks/cluster.py derives from the pinned node images;
- Prometheus (`github.com/prometheus/prometheus`, without its web UI's assets) at the release the stack installs
  (stacks/config/metrics.py), which the lane points at real engines and the gateway to run the autoscaling and
  dashboard queries, and KEDA (`github.com/kedacore/keda/v2`: its operator, metrics server and admission webhooks)
  at the release the stack installs (components/model_autoscaler.py), which the kind lane runs;
- the docker CLI's buildx plugin (`github.com/docker/buildx`), with which the stack creates its host-network
  BuildKit builder, and BuildKit itself (`github.com/moby/buildkit`: buildkitd, buildctl), which that builder runs
  in a container (tests/engine/buildkit_image makes the image, since none can be pulled here); both at the
  versions the docker-build plugin is built with;
- from the public source in ../shared/upstream-src (the proxy refuses these three modules; see its README): the
  command and docker-build plugins at the versions their pinned SDKs declare, and the CLI's Python language host
  (`pulumi-language-python`, its `pulumi-language-python-exec` script and `pulumi-resource-pulumi-python`), so the
  lane runs `pulumi` in the project directory exactly as a user does. Each source plugin's schema is checked against
  its installed SDK: a resource, function or property the SDK uses that the built plugin lacks fails the build.

Economies (these builds dominate a cold CI run): one Go build cache for all of them, every binary of a module in one
`go build`, no debug information (`-s -w`), and nothing built that no test runs.

Everything is cached by version under ~/.cache/model-stack-toolchain (override: MODEL_STACK_TOOLCHAIN); a second
run builds nothing. A plugin whose module the Go module proxy does not serve is reported, not faked: the lane
then covers what the built plugins allow (see KNOWN_UNBUILDABLE).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

CACHE = Path(os.environ.get("MODEL_STACK_TOOLCHAIN", Path.home() / ".cache" / "model-stack-toolchain"))
BIN = CACHE / "bin"
PULUMI_HOME = CACHE / "pulumi-home"
DOCKER_CONFIG = CACHE / "docker-config"

# The stacks' default `cluster.kubernetesVersion` is 1.32 (kind's node image v1.32.8). The proxy does not serve
# the 1.32.8 release of the staging module k8s.io/kube-controller-manager, so the control plane is the next patch
# release of the same minor.
KUBERNETES_VERSION = "1.32.9"

# The cosign release the stack's signing commands are written against (its v2 flags: --tlog-upload,
# --insecure-ignore-tlog, --allow-insecure-registry).
COSIGN_VERSION = "v2.6.1"

# The syft release whose `scan registry:<image>` and SYFT_REGISTRY_* settings the attestation script uses.
SYFT_VERSION = "v1.57.1"

# The cluster add-ons of the kind node image built here (name -> module, version, main package). kind's own images
# (kindnetd, its local-path-provisioner fork) and CoreDNS 1.11.3, which kubeadm 1.32 names, are not served by the
# module proxy; .ci/kind-node-image says what stands in for each.
NODE_ADD_ONS = {
    "coredns": ("github.com/coredns/coredns", "v1.14.3", "."),
    "local-path-provisioner": ("github.com/rancher/local-path-provisioner", "v0.0.30", "."),
    # NetworkPolicy: kube-router's firewall alone (iptables and ipset). kindnetd's enforcer, kube-network-policies,
    # queues packets with nftables' `queue` statement, and these machines' kernels lack CONFIG_NFT_QUEUE.
    "kube-router": ("github.com/cloudnativelabs/kube-router/v2", "v2.1.0", "./cmd/kube-router"),
}

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
}

# The proxy refuses these modules at every version, so they build from the exact upstream source kept in
# ../shared/upstream-src (name -> archive, module directory inside it, and how its version is stamped).
UPSTREAM_SRC = Path(__file__).resolve().parents[2] / "shared" / "upstream-src"
SOURCE_PLUGINS = {
    "command": ("pulumi-command-{version}.tar.gz", "provider", "./cmd/pulumi-resource-command",
                "-X github.com/pulumi/pulumi-command/provider/pkg/version.Version={version}"),
    "docker-build": ("pulumi-docker-build-{version}.tar.gz", ".", "./provider/cmd/pulumi-resource-docker-build",
                     "-X github.com/pulumi/pulumi-docker-build/provider.Version={version}"),
}
# docker-build copies one struct from each of these modules (every version refused by the proxy) into its schema's
# language sections; .ci/stand-ins declares each struct with the same JSON names.
STAND_INS = Path(__file__).resolve().parent / "stand-ins"
DOCKER_BUILD_STAND_INS = {
    "github.com/pulumi/pulumi-java": STAND_INS / "pulumi-java",
    "github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3": STAND_INS / "pulumi-language-dotnet",
}
# The language host of CLI 3.260.0 is on the CLI's main branch between the v3.259.0 and v3.260.0 tags.
LANGUAGE_HOST_ARCHIVE = "pulumi-language-python-1b59498.tar.gz"


def log(message: str) -> None:
    print(f"toolchain: {message}", file=sys.stderr, flush=True)


@dataclass
class GoBuild:
    """One `go build` of a module's packages (from the module proxy, from this repository, or from an archive of
    upstream source), its relative `replace` targets laid beside it."""

    name: str
    module: str
    version: str
    packages: dict[str, str]  # binary name -> package path inside the module
    sibling_version: str  # version of every module the go.mod replaces with a relative path
    ldflags: str = ""
    generate_in: list[str] = field(default_factory=list)  # packages whose go:generate must run first
    env: dict[str, str] = field(default_factory=dict)
    source: Path | None = None  # a module of this repository to build instead of the downloaded module@version
    archive: tuple[Path, str] | None = None  # (an archive of upstream source, the module's directory inside it)
    go_mod_edits: list[list[str]] = field(default_factory=list)  # go commands run in the module before building
    extras: dict[str, str] = field(default_factory=dict)  # file installed beside the binaries -> path in the archive
    # Called with the output directory and the module's source directory; raises SystemExit on a mismatch.
    check: Callable[[Path, Path], None] | None = None

    @property
    def stamp(self) -> Path:
        return CACHE / "built" / f"{self.name}-{self.version}"

    def outputs(self) -> list[Path]:
        return [CACHE / "versions" / self.name / self.version / binary for binary in [*self.packages, *self.extras]]

    def build(self) -> float:
        if self.stamp.exists() and all(path.exists() for path in self.outputs()):
            return 0.0
        started = time.monotonic()
        log(f"building {self.name} {self.version} from {self.module}")
        with tempfile.TemporaryDirectory(prefix=f"toolchain-{self.name}-") as work:
            # Deep enough that replace targets such as ../../../../pkg stay inside the work tree.
            main = Path(work, "a", "b", "c", "d", "main")
            if self.archive:
                tarball, module_dir = self.archive
                unpacked = Path(work, "archive")
                unpacked.mkdir()
                shutil.unpack_archive(tarball, unpacked)
                (root,) = unpacked.iterdir()  # an archive holds one top directory
                copy_module(root / module_dir, main)
            else:
                copy_module(self.source or download(self.module, self.version), main)
            # GOWORK=off: k8s.io/kubernetes ships a go.work naming its staging tree; the copies laid beside it by the
            # replace directives are what the build uses.
            env = {**os.environ, "GOFLAGS": "-mod=mod", "GOWORK": "off", "CGO_ENABLED": "0", **self.env}
            for command in self.go_mod_edits:
                run(command, cwd=main, env=env)
            for old_path, target in relative_replaces(main):
                try:
                    copy_module(download(old_path, self.sibling_version), (main / target).resolve())
                except ModuleNotServed as error:
                    # Only a module that none of the built packages imports can go (k8s.io/kubernetes's sample-*
                    # staging modules): `go build` below fails loudly if a package needs it after all.
                    log(f"{error}; dropping it from the build")
                    run(["go", "mod", "edit", f"-dropreplace={old_path}", f"-droprequire={old_path}"], cwd=main)
            for package in self.generate_in:
                run(["go", "generate", package], cwd=main, env=env)
            out_dir = CACHE / "versions" / self.name / self.version
            out_dir.mkdir(parents=True, exist_ok=True)
            # One `go build` for all of a module's binaries: their shared packages compile once and link in parallel.
            # `-s -w` leaves out the symbol table and DWARF, which no test reads (a third of each binary's size).
            flags = ["-trimpath", "-ldflags", f"-s -w {self.ldflags}".strip()]
            if len(self.packages) == 1:
                ((binary, package),) = self.packages.items()
                run(["go", "build", *flags, "-o", str(out_dir / binary), package], cwd=main, env=env)
            else:
                run(["go", "build", *flags, "-o", f"{out_dir}/", *self.packages.values()], cwd=main, env=env)
                for binary, package in self.packages.items():  # `go build -o DIR/` names each after its directory
                    built = out_dir / Path(package).name
                    if not built.is_file():
                        raise SystemExit(f"toolchain: {self.name}: `go build -o {out_dir}/` made no {built.name} "
                                         f"for {package}")
                    built.rename(out_dir / binary)
            for extra, path in self.extras.items():
                shutil.copy(root / path, out_dir / extra)
            if self.check:
                self.check(out_dir, main)
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


def sdk_package_dir(plugin: str) -> Path:
    """The directory of the installed Python SDK whose pulumi-plugin.json declares this resource plugin."""
    for distribution in metadata.distributions():
        for file in distribution.files or []:
            if file.name == "pulumi-plugin.json" and json.loads(file.read_text()).get("name") == plugin:
                return Path(str(file.locate())).parent
    raise SystemExit(f"toolchain: no installed Python SDK declares the {plugin} plugin")


def check_schema(plugin: str, binary: Path, committed: Path) -> None:
    """Fails when the built plugin's schema differs from the one its source commits (but for `version`, which the
    source leaves out), lacks a resource or function the installed SDK calls, or has other properties for a
    resource than the SDK's getters for it (the SDK was generated from the real schema)."""
    schema = json.loads(run(["pulumi", "package", "get-schema", str(binary)], env={**os.environ, **environment()}))
    problems = []
    if {**schema, "version": None} != {**json.loads(committed.read_text()), "version": None}:
        problems.append(f"its schema differs from the committed {committed.name}")
    for module in sdk_package_dir(plugin).rglob("*.py"):
        text = module.read_text()
        for token in re.findall(r"pulumi\.runtime\.invoke\('([^']+)'", text):
            if token not in schema.get("functions", {}):
                problems.append(f"function {token} ({module.name})")
        for token in re.findall(r"super\(\w+, __self__\)\.__init__\(\s*'([^']+)'", text):
            if ":" not in token:  # the provider resource, whose token is the package's name
                continue
            resource = schema.get("resources", {}).get(token)
            if resource is None:
                problems.append(f"resource {token} ({module.name})")
                continue
            # Every getter in the resource's module, of its args and of the resource itself, by schema name.
            getters = {named or plain for named, plain in re.findall(
                r'@pulumi\.getter(?:\(name="([^"]+)"\))?\s+def (\w+)', text)}
            declared = {*resource.get("inputProperties", {}), *resource.get("properties", {})}
            if getters != declared:
                problems.append(f"resource {token}: the SDK has {sorted(getters - declared)} the plugin lacks, "
                                f"the plugin has {sorted(declared - getters)} the SDK lacks")
    if problems:
        raise SystemExit(f"toolchain: the built {plugin} plugin does not match its installed SDK:\n  "
                         + "\n  ".join(problems))
    log(f"{plugin}: schema matches the installed SDK")


def upstream_archive(name: str) -> Path:
    archive = UPSTREAM_SRC / name
    if not archive.is_file():
        raise SystemExit(f"toolchain: {archive} is missing: the command and docker-build plugins and the Python "
                         "language host build from the upstream source kept in ../shared/upstream-src beside the "
                         "project (its README says what each archive is); check out the project with shared/ beside it")
    return archive


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
        if name in SOURCE_PLUGINS:
            archive, module_dir, package, ldflags = SOURCE_PLUGINS[name]
            binary = f"pulumi-resource-{name}"
            stand_ins = DOCKER_BUILD_STAND_INS if name == "docker-build" else {}
            plan.append(GoBuild(
                # A stand-in's edit rebuilds the plugin, as a bridge module's edit does.
                binary, f"{archive.format(version=version)} (../shared/upstream-src)",
                f"v{version}" + (f"-{tree_digest(STAND_INS)}" if stand_ins else ""),
                {binary: package}, sibling_version="", ldflags=ldflags.format(version=version),
                archive=(upstream_archive(archive.format(version=version)), module_dir),
                go_mod_edits=[["go", "mod", "edit", *(f"-replace={module}={path}" for module, path in stand_ins.items())]]
                if stand_ins else [],
                check=lambda out_dir, source, name=name, binary=binary, package=package: check_schema(
                    name, out_dir / binary, source / package / "schema.json"),
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
    # The CLI's Python language host, built against exactly the pkg and sdk modules of the CLI above.
    sdk_modules = [f"github.com/pulumi/pulumi/{module}@v{pulumi_version}" for module in ("pkg/v3", "sdk/v3")]
    plan.append(GoBuild(
        "pulumi-language-python", f"{LANGUAGE_HOST_ARCHIVE} (../shared/upstream-src)", f"v{pulumi_version}",
        {"pulumi-language-python": "."}, sibling_version="",
        ldflags=f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{pulumi_version}",
        archive=(upstream_archive(LANGUAGE_HOST_ARCHIVE), "sdk/python/cmd/pulumi-language-python"),
        go_mod_edits=[
            ["go", "mod", "edit", "-dropreplace=github.com/pulumi/pulumi/pkg/v3",
             "-dropreplace=github.com/pulumi/pulumi/sdk/v3"],
            ["go", "get", *sdk_modules],
        ],
        # The host runs programs through this script, which it expects beside itself.
        extras={
            "pulumi-language-python-exec": "sdk/python/cmd/pulumi-language-python-exec",
            "pulumi-resource-pulumi-python": "sdk/python/dist/pulumi-resource-pulumi-python",
        },
    ))
    # buildx and BuildKit at the releases the docker-build plugin is built against (its go.mod).
    docker_build_requires = go_requirements(upstream_archive(SOURCE_PLUGINS["docker-build"][0].format(
        version=plugins["docker-build"])))
    buildx, buildkit = (docker_build_requires[module] for module in ("github.com/docker/buildx", "github.com/moby/buildkit"))
    plan.append(GoBuild("buildx", "github.com/docker/buildx", buildx, {"docker-buildx": "./cmd/buildx"},
                        sibling_version=buildx, ldflags=f"-X github.com/docker/buildx/version.Version={buildx}"))
    plan.append(GoBuild("buildkit", "github.com/moby/buildkit", buildkit,
                        {"buildkitd": "./cmd/buildkitd", "buildctl": "./cmd/buildctl"}, sibling_version=buildkit,
                        ldflags=f"-X github.com/moby/buildkit/version.Version={buildkit}"))
    # Prometheus's Go module is versioned v0.<major><minor>.<patch>: release 3.5.0 is v0.305.0.
    major, minor, patch = prometheus_release().split(".")
    prometheus = f"v0.{int(major) * 100 + int(minor)}.{patch}"
    plan.append(GoBuild("prometheus", "github.com/prometheus/prometheus", prometheus, {"prometheus": "./cmd/prometheus"},
                        sibling_version=prometheus,
                        ldflags=f"-X github.com/prometheus/common/version.Version={prometheus_release()}"))
    kind = f"v{kind_release()}"
    plan.append(GoBuild("kind", "sigs.k8s.io/kind", kind, {"kind": "."}, sibling_version=kind))
    # What the kind node image built here (.ci/kind-node-image) holds besides Debian's containerd, runc and CNI
    # plugins: the node binaries of the control plane's Kubernetes release, and the cluster add-ons it preloads.
    plan.append(GoBuild(
        "kube-node", kubernetes.module, kubernetes.version,
        {binary: f"./cmd/{binary}" for binary in ("kubelet", "kubeadm", "kubectl", "kube-scheduler", "kube-proxy")},
        sibling_version=kubernetes.sibling_version, ldflags=k8s_ldflags,
    ))
    plan += [
        GoBuild(name, module, version, {name: package}, sibling_version=version)
        for name, (module, version, package) in NODE_ADD_ONS.items()
    ]
    # KEDA's operator, metrics server and admission webhooks at the release the stack installs, which the kind lane
    # runs to scale a model from zero (no image of KEDA can be pulled here).
    keda = f"v{project_setting('components.model_autoscaler', 'KEDA_VERSION')}"
    plan.append(GoBuild(
        "keda", "github.com/kedacore/keda/v2", keda,
        {"keda": "./cmd/operator", "keda-adapter": "./cmd/adapter", "keda-admission-webhooks": "./cmd/webhooks"},
        sibling_version=keda, ldflags=f"-X github.com/kedacore/keda/v2/version.Version={keda.lstrip('v')}",
    ))
    return plan, plugins, missing


def go_requirements(archive: Path) -> dict[str, str]:
    """module -> version required by the go.mod at the top of an upstream source archive."""
    with tarfile.open(archive) as tar:
        go_mod = next(member for member in tar.getmembers() if member.name.count("/") == 1
                      and member.name.endswith("/go.mod"))
        text = tar.extractfile(go_mod).read().decode()
    return dict(re.findall(r"^\s*(\S+) (v\S+)(?: // indirect)?$", text, re.MULTILINE))


def prometheus_release() -> str:
    """The Prometheus release the stack installs (`3.5.0`), from its default image."""
    return project_setting("stacks.config.metrics", "PROMETHEUS_IMAGE").rpartition(":v")[2]


def kind_release() -> str:
    """The kind release the stacks pin (scripts/kind-version reads the same function)."""
    return project_setting("stacks.cluster", "kind_release_for_every_node_image")()


def project_setting(module: str, name: str):
    """`name` from one of the project's own modules, where the version a tool must have is decided."""
    project = str(Path(__file__).resolve().parents[1])
    if project not in sys.path:
        sys.path.insert(0, project)
    return getattr(importlib.import_module(module), name)


def environment() -> dict[str, str]:
    return {
        "MODEL_STACK_TOOLCHAIN": str(CACHE),
        # The docker CLI finds the buildx plugin here (and no credentials: the lane's registries need none).
        "DOCKER_CONFIG": str(DOCKER_CONFIG),
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
    plugins_dir = DOCKER_CONFIG / "cli-plugins"
    plugins_dir.mkdir(parents=True, exist_ok=True)
    buildx_link = plugins_dir / "docker-buildx"
    if not buildx_link.is_symlink() or os.readlink(buildx_link) != os.readlink(BIN / "docker-buildx"):
        buildx_link.unlink(missing_ok=True)
        buildx_link.symlink_to(os.readlink(BIN / "docker-buildx"))
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

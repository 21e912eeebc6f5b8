"""The engine lane: the real Pulumi CLI, engine, language host and providers, built by .ci/toolchain.py, on a file
backend in a temporary directory, against a real Kubernetes API server, Docker engine and registry.

The project's own stacks run as users run them: the `pulumi` CLI in a copy of the project directory, which starts the
program through the CLI's Python language host in the project's virtualenv (`project_stack`, and tests/engine/cli.py
for the commands exactly as typed). The Automation API's inline programs remain only for the tests of one component
on its plugin (`engine_stack`, tests/engine/test_docker_provider.py), where a whole project would only be in the way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pulumi import automation as auto

from apiserver import cluster  # noqa: F401  (a fixture for every lane test)
from cli import PASSPHRASE, Project
from control_plane import ControlPlane, run_control_plane
from harness import ROOT
from lane_images import (  # noqa: F401  (fixtures of the dev stack's lane tests)
    buildkit_image, engine_image_digest, gateway_base_image, keda_images, kube_state_metrics_image, prometheus_image,
    registry_image, registry_network)
from llama_server import BUILD_SCRIPT, llama_server_directory

TOOLCHAIN = ROOT / ".ci" / "toolchain.py"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def toolchain() -> dict[str, str]:
    """Builds (or finds cached) the Pulumi CLI, the plugins and the control plane; returns the environment."""
    build = subprocess.run([sys.executable, str(TOOLCHAIN)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"the toolchain did not build:\n{build.stderr[-4000:]}")
    exports = subprocess.run([sys.executable, str(TOOLCHAIN), "--env"], capture_output=True, text=True, check=True)
    env = dict(line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines())
    os.environ.update(env)  # the control plane binaries are found on PATH
    return env


@pytest.fixture(scope="session")
def control_plane(toolchain, tmp_path_factory) -> Iterator[ControlPlane]:
    with ExitStack() as stack:
        yield run_control_plane(tmp_path_factory.mktemp("control-plane"), stack)


@pytest.fixture(scope="session")
def llama_server_build() -> Path:
    """The directory .ci/llama-server built into; built here on a developer's machine when missing (about 10
    minutes on 2 cores, once), while CI, which builds it beforehand, fails instead."""
    directory = llama_server_directory()
    if not (directory / "llama-server").exists():
        if os.environ.get("CI"):
            pytest.fail(f"llama-server is not built in {directory}: .ci/run builds it with {BUILD_SCRIPT}")
        if subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.DEVNULL).returncode != 0:
            pytest.fail(f"{BUILD_SCRIPT} failed (its output is above)")
    return directory


@pytest.fixture
def project(toolchain, tmp_path) -> Callable[..., Project]:
    """Returns `make(program=None)`: a copy of this project, run by the `pulumi` CLI on a file backend of this test."""

    def make(program: str | None = None) -> Project:
        directory = tmp_path / f"project-{len(list(tmp_path.glob('project-*')))}"
        directory.mkdir()
        (tmp_path / "state").mkdir(exist_ok=True)
        return Project.copy(directory, toolchain, tmp_path / "state", program=program)

    return make


@pytest.fixture
def project_stack(project, toolchain) -> Callable[..., auto.Stack]:
    """Returns `make(name, config, program=None)`: a stack of a copy of this project whose `Pulumi.<name>.yaml`
    holds `config` (keys without the `model-stack:` prefix), as a user writes one. The Automation API drives it as a
    local program: every operation is the `pulumi` CLI run in the project directory, the program started by the
    Python language host in the project's virtualenv. `program` stands in for `__main__.py` where this machine
    forces a difference (tests/engine/programs)."""

    def make(name: str, config: dict[str, Any], program: str | None = None) -> auto.Stack:
        copy = project(program)
        return auto.create_stack(
            name, work_dir=str(copy.directory),
            opts=auto.LocalWorkspaceOptions(
                pulumi_home=toolchain["PULUMI_HOME"],
                env_vars={key: value for key, value in copy.env.items() if key not in os.environ or
                          os.environ[key] != value},
                secrets_provider="passphrase",
                pulumi_command=auto.PulumiCommand(root=toolchain["MODEL_STACK_TOOLCHAIN"]),
                stack_settings={name: auto.StackSettings(
                    config={f"model-stack:{key}": value for key, value in config.items()})},
            ),
        )

    return make


@pytest.fixture
def engine_stack(toolchain, tmp_path) -> Callable[..., auto.Stack]:
    """Returns `make(name, config, program)`: a stack whose program is a Python function run in this process by the
    Automation API (inline), for a test of one component on its plugin; its `Pulumi.<name>.yaml` holds `config`."""

    def make(name: str, config: dict[str, Any], program: Callable[[], None]) -> auto.Stack:
        workspace_dir = tmp_path / f"workspace-{name}"
        workspace_dir.mkdir()
        (tmp_path / "state").mkdir(exist_ok=True)
        return auto.create_stack(
            name, project_name="model-stack", program=program,
            opts=auto.LocalWorkspaceOptions(
                work_dir=str(workspace_dir),
                pulumi_home=toolchain["PULUMI_HOME"],
                env_vars={
                    **toolchain,
                    "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
                    "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
                },
                secrets_provider="passphrase",
                pulumi_command=auto.PulumiCommand(root=toolchain["MODEL_STACK_TOOLCHAIN"]),
                project_settings=auto.ProjectSettings(name="model-stack", runtime="python"),
                stack_settings={name: auto.StackSettings(
                    config={f"model-stack:{key}": value for key, value in config.items()})},
            ),
        )

    return make

"""The engine lane: the real Pulumi engine and providers, built from Go modules by .ci/toolchain.py, on a file
backend in a temporary directory, against a real Kubernetes API server.

The program runs through the Automation API as an inline program: the Python SDK serves the language runtime
itself, so the engine needs no `pulumi-language-python` binary (the Go module proxy does not serve that module;
see .ci/toolchain.py). Everything else is what `pulumi up` does: the same engine, plugins, state and diffs.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pulumi import automation as auto

from control_plane import ControlPlane, run_control_plane
from harness import ROOT
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


def run_program() -> None:
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


@pytest.fixture
def engine_stack(toolchain, tmp_path) -> Callable[..., auto.Stack]:
    """Returns `make(name, config)`: a stack of this project on a fresh file backend in a temporary directory,
    its `Pulumi.<name>.yaml` holding `config` (keys without the `model-stack:` prefix), as a user writes one."""

    def make(name: str, config: dict[str, Any], program: Callable[[], None] = run_program) -> auto.Stack:
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
                    "PULUMI_CONFIG_PASSPHRASE": "engine-lane",
                },
                secrets_provider="passphrase",
                pulumi_command=auto.PulumiCommand(root=toolchain["MODEL_STACK_TOOLCHAIN"]),
                project_settings=auto.ProjectSettings(name="model-stack", runtime="python"),
                stack_settings={name: auto.StackSettings(
                    config={f"model-stack:{key}": value for key, value in config.items()})},
            ),
        )

    return make

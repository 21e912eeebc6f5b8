"""The components ship as an installable distribution whose import name, `model_stack_components`, cannot
collide with a consumer's own `components`, `stacks` or `tests` packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from harness import ROOT

IMPORT_NAME = "model_stack_components"
COMPONENT_MODULES = sorted(path.stem for path in (ROOT / "components").glob("*.py"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy so the build's scratch directories never land in the working tree.
    source = tmp_path_factory.mktemp("source") / "model-stack"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", ".pulumi-state"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True,
    )
    # pip fetches the build backend pyproject.toml names (setuptools) into an isolated environment.
    assert build.returncode == 0, f"building the wheel failed (needs the package index for setuptools):\n{build.stderr}"
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_every_component_under_its_import_name_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {IMPORT_NAME}
    assert {f"{IMPORT_NAME}/{module}.py" for module in COMPONENT_MODULES} <= set(names)


def test_the_installed_components_import_without_the_repo(wheel, tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    modules = [IMPORT_NAME] + [f"{IMPORT_NAME}.{module}" for module in COMPONENT_MODULES if module != "__init__"]
    program = (
        "import importlib, importlib.util, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), module.__file__\n"
        "for name in ('components', 'stacks'):\n"
        "    assert importlib.util.find_spec(name) is None, name + ' leaked into the environment'\n"
    )
    # Outside the repo, with only the installed wheel added to the path (dependencies come from this interpreter).
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# The first release of each SDK that has what the code passes, found in their PyPI wheels (`pip download
# --no-deps <package>==<version>` and a grep of the module): an older floor installs fine and breaks at runtime.
FIRST_RELEASES_WITH = {
    "pulumi-docker": ("4.7", "Container(cpus=...)"),
    "pulumi-eks": ("4.1", "Cluster(deletion_protection=...)"),
    "pulumi-aws": ("7.10", "what pulumi-eks 4.1 requires; ecr.Repository(image_tag_mutability_exclusion_filters=...)"),
    "pulumi-docker-build": ("0.0.12", "Index, CacheToRegistry(image_manifest=..., oci_media_types=...)"),
}
# The engine lane installs these exact versions (constraints.txt on main): the floors must admit them.
ENGINE_LANE = {"pulumi": "3.260.0", "pulumi-kubernetes": "4.25.0"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_declared_floors_have_every_argument_the_code_passes():
    floors = dict(line.split("==") for line in subprocess.run(
        [sys.executable, str(ROOT / "scripts/lowest-constraints")], capture_output=True, text=True, check=True,
    ).stdout.split())
    for package, (first, what) in FIRST_RELEASES_WITH.items():
        assert _version(floors[package]) >= _version(first), f"{package}>={floors[package]} lacks {what}"
    for package, version in ENGINE_LANE.items():
        assert _version(floors[package]) <= _version(version), package


def test_ci_runs_the_mocks_suite_on_the_floors():
    """Both CIs (.ci/run here, the GitHub workflow for users) run one script, which installs the floors."""
    workflow = yaml.safe_load((ROOT / ".github/workflows/pulumi.yml").read_text())
    steps = " ".join(step.get("run", "") for step in workflow["jobs"]["test"]["steps"])
    assert ".ci/test-lowest-versions" in steps and ".ci/test-lowest-versions" in (ROOT / ".ci/run").read_text()
    script = (ROOT / ".ci/test-lowest-versions").read_text()
    assert "scripts/lowest-constraints >" in script and '-c "$constraints"' in script and "pytest" in script
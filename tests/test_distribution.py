"""The components ship as an installable distribution whose import name, `model_stack_components`, cannot
collide with a consumer's own `components`, `stacks` or `tests` packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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

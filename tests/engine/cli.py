"""Runs this project the way its users do: the `pulumi` CLI in the project directory (`runtime: python`, the
project's virtualenv, the CLI's Python language host), on a file backend of its own.

The project directory is a copy of this checkout's files (tracked and not ignored) in a temporary directory, with
`.venv` and `policy/venv` linked to this checkout's: `pulumi stack init` writes each stack's encryption salt into
`Pulumi.<stack>.yaml` beside `Pulumi.yaml`, which must not land in the checkout, and tests run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import ROOT

PASSPHRASE = "engine-lane"
POLICY_VENV = ROOT / "policy" / "venv"


def policy_virtualenv() -> Path:
    """policy/venv, as the workflow's install step makes it (policy/PulumiPolicy.yaml names it), once."""
    python = POLICY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(POLICY_VENV)], check=True)
        # The constraints keep the pack's SDK at the CLI's version, as the project's own virtualenv does.
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
                        "-r", str(ROOT / "policy" / "requirements.txt")], check=True)
    return POLICY_VENV


def project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@dataclass
class Project:
    directory: Path
    env: dict[str, str]

    @classmethod
    def copy(cls, directory: Path, toolchain: dict[str, str], state: Path, program: str | None = None) -> "Project":
        """This project in `directory`; `program` (a file of tests/engine/programs, relative to the project) stands
        in for its `__main__.py` where this machine forces a difference. It replaces the file rather than naming
        another `main` in Pulumi.yaml, because the providers run in the directory of `main`, and the stack's paths
        (the gateway's build context) are relative to the project."""
        for name in project_files():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        (directory / ".venv").symlink_to(ROOT / ".venv")
        (directory / "policy" / "venv").symlink_to(policy_virtualenv())
        if program:
            shutil.copy2(ROOT / program, directory / "__main__.py")
        env = {
            **os.environ, **toolchain,
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        }
        env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
        return cls(directory, env)

    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=self.directory, env=self.env,
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"`pulumi {' '.join(args)}` exited {result.returncode}:\n"
                                 + "\n".join(error_diagnostics(result.stdout))
                                 + f"\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def stack(self, name: str, config: dict[str, Any] | None = None, secrets: dict[str, str] | None = None) -> "Stack":
        """A new stack `name`; its Pulumi.<name>.yaml holds `config` (keys without the project prefix) when given,
        else the checkout's own stack file of that name."""
        self.pulumi("stack", "init", name, "--secrets-provider", "passphrase")
        stack = Stack(self, name)
        if config is not None:
            stack.write_config(config)
        for key, value in (secrets or {}).items():
            self.pulumi("config", "set", "--secret", "--stack", name, f"model-stack:{key}", value)
        return stack


@dataclass
class Stack:
    project: Project
    name: str

    @property
    def file(self) -> Path:
        return self.project.directory / f"Pulumi.{self.name}.yaml"

    def write_config(self, config: dict[str, Any]) -> None:
        """Rewrites the plain settings of the stack file, as a user edits it; secrets and the salt stay."""
        document = yaml.safe_load(self.file.read_text()) or {}
        kept = {key: value for key, value in (document.get("config") or {}).items()
                if isinstance(value, dict) and "secure" in value}
        document["config"] = {**{f"model-stack:{key}": value for key, value in config.items()}, **kept}
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))

    def config(self) -> dict[str, Any]:
        document = yaml.safe_load(self.file.read_text()) or {}
        return {key.removeprefix("model-stack:"): value for key, value in (document.get("config") or {}).items()
                if not (isinstance(value, dict) and "secure" in value)}

    def run(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.project.pulumi(command, "--stack", self.name, *args, check=check)

    def up(self, *args: str) -> dict[str, int]:
        """`pulumi up --yes`; the operations it carried out, but `same`."""
        return applied(self.run("up", "--yes", "--skip-preview", "--json", *args).stdout)

    def preview(self, *args: str) -> dict[str, int]:
        """`pulumi preview`; the operations it plans, but `same`."""
        return without_same(json.loads(self.run("preview", "--json", *args).stdout)["changeSummary"])

    def planned_steps(self, *args: str) -> dict[str, str]:
        """`pulumi preview`'s steps but `same`: each resource's name (the last part of its URN) -> its operation."""
        steps = json.loads(self.run("preview", "--json", *args).stdout).get("steps") or []
        return {step["urn"].rpartition("::")[2]: step["op"] for step in steps if step["op"] != "same"}

    def destroy(self) -> dict[str, int]:
        return applied(self.run("destroy", "--yes", "--skip-preview", "--json").stdout)

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "output", "--json", "--show-secrets").stdout)


def error_diagnostics(output: str) -> list[str]:
    """The errors a `--json` run reported, each with the resource it names: what the CLI would print in red."""
    errors = []
    for line in output.splitlines():
        if '"severity":"error"' in line:
            diagnostic = json.loads(line).get("diagnosticEvent") or {}
            errors.append(f"{diagnostic.get('urn', '')}: {diagnostic.get('message', '').strip()}")
    return errors


def applied(events: str) -> dict[str, int]:
    """The operations of an update from its `--json` event stream (one engine event a line), but `same`."""
    for line in reversed(events.splitlines()):
        if '"summaryEvent"' in line:
            return without_same(json.loads(line)["summaryEvent"]["resourceChanges"])
    raise AssertionError(f"no summary event in the update's output:\n{events[-4000:]}")


def without_same(summary: dict[str, int] | None) -> dict[str, int]:
    return {operation: count for operation, count in (summary or {}).items() if operation != "same"}

"""The domain package stays free of the web and queue frameworks; settings parse strictly."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from farm.config import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("farm", "api", "workers", "tests", "client", "ops")


def test_farm_imports_neither_flask_nor_celery() -> None:
    code = (
        "import pkgutil, importlib, sys, farm\n"
        "for m in pkgutil.walk_packages(farm.__path__, 'farm.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('flask', 'celery', 'kombu'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_come_from_farm_variables_only() -> None:
    settings = load_settings(
        {
            "FARM_PARALLELISM": "4",
            "FARM_S3_SECURE": "true",
            "FARM_WEBHOOK_RETRY_DELAYS": "1,2.5",
            "PARALLELISM": "9",
        }
    )
    assert settings.parallelism == 4 and settings.s3_secure is True
    assert settings.webhook_retry_delays == (1.0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FARM_PARALLELISM", "many"),
        ("FARM_S3_SECURE", "perhaps"),
        ("FARM_SANDBOX", "docker"),
        ("FARM_RENDERER", "vulkan"),
    ],
)
def test_garbage_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import statement in a file, read from its source (AST)."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_the_jail_program_imports_nothing_else_of_the_project() -> None:
    # Only workers/jail/program is bound into the jail: an import of anything else of the
    # project would fail there (and would widen what a scene can reach).
    program = ROOT / "workers" / "jail" / "program"
    for path in sorted(program.glob("*.py")):
        for module, level in _imports(path):
            if level:
                assert level == 1, f"{path.name}: relative import outside the program"
                continue
            top = module.split(".")[0]
            assert top not in PROJECT_PACKAGES, f"{path.name} imports {module}"


def test_the_jail_program_runs_with_only_its_own_directory(tmp_path: Path) -> None:
    # Given only the program directory on the path, as inside the jail
    package = tmp_path / "workers" / "jail" / "program"
    package.parent.mkdir(parents=True)
    shutil.copytree(ROOT / "workers" / "jail" / "program", package)
    code = "import workers.jail.program.runner, workers.jail.program.media; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "ok", out.stderr


# Imports inside farm/ of the adapters, found by reading the source (a function-level import
# escapes the import-time check above). The CLI's are moving to their packages (issue 16).
FARM_ADAPTER_IMPORTS_KNOWN = {"cli.py"}


def test_farm_source_imports_no_adapter_or_framework() -> None:
    for path in sorted((ROOT / "farm").rglob("*.py")):
        if path.name in FARM_ADAPTER_IMPORTS_KNOWN:
            continue
        for module, _ in _imports(path):
            top = module.split(".")[0]
            assert top not in ("api", "workers", "flask", "celery", "kombu"), (
                f"farm/{path.relative_to(ROOT / 'farm')} imports {module}"
            )


def test_every_s3_key_is_built_in_farm_objects() -> None:
    # An f-string that starts with "jobs/" is an object key built outside farm/objects.py.
    for package in ("farm", "workers", "api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "farm" / "objects.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.JoinedStr) and node.values:
                    first = node.values[0]
                    if isinstance(first, ast.Constant) and str(first.value).startswith("jobs/"):
                        raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} builds a key")

"""The domain package imports neither the adapters nor their frameworks, read from the source.

Unlike importing ``farm`` and looking at ``sys.modules``, this also sees imports inside
functions and behind ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"api", "workers", "flask", "celery", "kombu", "farm_client"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement anywhere in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            name = arg.value if isinstance(arg, ast.Constant) else "<computed>"
            found.append((node.lineno, str(name)))
    return found


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def forbidden_imports(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in imported_modules(path.read_text())
        if module.split(".")[0] in FORBIDDEN or module == "<computed>"
    ]


def test_the_checker_sees_imports_inside_functions() -> None:
    source = "def f():\n    from workers.publish import Publisher\n    import flask.json\n"
    source += "importlib.import_module('api.views')\n"
    modules = [m for _, m in imported_modules(source)]
    assert modules == ["workers.publish", "flask.json", "api.views"]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "farm").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_farm_imports_no_adapter(path: Path) -> None:
    assert forbidden_imports(path) == []


def test_the_client_imports_nothing_of_the_server() -> None:
    client = sorted((ROOT / "client" / "farm_client").rglob("*.py"))
    assert client, "client/farm_client is missing"
    server = {"farm", "api", "workers", "flask", "celery", "psycopg", "manim", "minio", "redis"}
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in client
        for line, module in imported_modules(path.read_text())
        if module.split(".")[0] in server
    ]
    assert bad == []


def test_every_package_registers_its_own_commands() -> None:
    # The `farm` entry points (setup.cfg, client/setup.cfg) as installed by `make venv`
    code = (
        "import sys\n"
        "from farm.cli import build_parser\n"
        "sub = build_parser()._subparsers._group_actions[0].choices\n"
        "print(' '.join(sorted(sub)))\n"
        "heavy = ('flask', 'celery', 'prometheus_client', 'manim', 'gunicorn')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    commands, loaded = [*run.stdout.splitlines(), "", ""][:2]
    assert set(commands.split()) >= {
        *("api", "migrate", "keys", "worker", "scheduler", "webhooks"),
        *("render", "status", "logs", "cancel", "jobs"),
    }
    # Registering them loads no framework: prometheus_client in particular must wait until
    # `farm api`/`farm worker` have set PROMETHEUS_MULTIPROC_DIR.
    assert loaded == ""


def test_the_api_image_needs_no_manim() -> None:
    # What the API image runs (`farm api|scheduler|migrate`) imports without the [render] extra
    code = (
        "import sys\n"
        "for name in ('manim', 'ffmpeg', 'cairo', 'numpy', 'PIL'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import api.app, api.server, farm.commands, workers.commands, workers.scheduler\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr

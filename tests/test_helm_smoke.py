"""The chart's `helm test` script (helm/manim-render-farm/files/smoke.py) against a real farm:
`farm api` and a worker on the suite's PostgreSQL, Redis and S3, exactly as the hook Pod runs it
(its argv, the farm's environment, `farm` on PATH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOT, Process

SMOKE = ROOT / "helm" / "manim-render-farm" / "files" / "smoke.py"
API_PORT = 8300 + SLOT


def smoke(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    # The hook Pod runs `python -c <script> ARGS`; running the file is the same program.
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, str(SMOKE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def api_url(farm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("smoke") / "api.log"
    api = Process(["api", "--bind", f"127.0.0.1:{API_PORT}", "--workers", "1"], farm_env, log)
    api.start()
    url = f"http://127.0.0.1:{API_PORT}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                api.stop()
                pytest.fail(f"farm api did not answer; see {log}")
            time.sleep(0.3)
    yield url
    api.stop()


def test_smoke_fails_when_the_api_never_answers(farm_env: dict[str, str]) -> None:
    result = smoke(farm_env, "http://127.0.0.1:9", "", "", "3", timeout=60)
    assert result.returncode != 0 and "API not ready" in result.stderr


def test_smoke_checks_api_ready(farm_env: dict[str, str], api_url: str) -> None:
    result = smoke(farm_env, api_url, "", "", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "API ready"


def test_smoke_render_low_completes_and_its_key_is_revoked(
    farm_env: dict[str, str], api_url: str, worker: Process, pool: object
) -> None:
    # Given the farm with a worker, When the hook's low check runs
    result = smoke(farm_env, api_url, "low", "", "240")
    # Then it reports the completed job, and leaves no usable key behind
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout.strip().splitlines()[-1])
    assert job["status"] == "completed" and job["quality"] == "low"
    with pool.connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute("SELECT revoked_at FROM api_keys WHERE name = 'helm-test'").fetchall()
    assert rows and all(r["revoked_at"] is not None for r in rows)


def test_smoke_fails_when_the_job_used_another_renderer(
    farm_env: dict[str, str], api_url: str, worker: Process
) -> None:
    # The fourk hook expects OpenGL from a GPU pool: a cairo result (a silent fallback) fails it.
    result = smoke(farm_env, api_url, "low", "opengl", "240")
    assert result.returncode == 1
    assert "rendered with cairo, not opengl" in result.stderr

"""The Python SDK (farm_client, client/) and the client commands of ``farm`` against a real farm: a
gunicorn API subprocess on the slot's port plus the ``worker`` fixture. The retry, 429 and
Kodisc-compatibility cases use a tiny scripted HTTP server instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import requests
from farm_client import cli as client_cli
from farm_client import client as sdk

from farm import presets
from tests.conftest import FARM, ROOT, SLOT, Key, Process, unique
from tests.support import api_port, failing_scene, start_api

API_PORT = api_port(SLOT)


def ok_scene(tag: str) -> str:
    """A tiny scene with a subcaption (so the job has captions); ``tag`` defeats the cache."""
    return (
        "from manim import *\n\n\n"
        "class Tiny(Scene):\n"
        "    def construct(self):\n"
        f"        # {tag}\n"
        "        self.add_subcaption('a tiny square', duration=0.5)\n"
        "        self.play(Create(Square()), run_time=0.5)\n"
    )


# A scene that never finishes on its own: for cancel and Ctrl-C.
SLOW_SCENE = (
    "from manim import *\nimport time\n\n\n"
    "class Slow(Scene):\n"
    "    def construct(self):\n"
    "        time.sleep(45)\n"
    "        self.wait(0.2)\n"
)


@pytest.fixture(scope="module")
def api_url(farm_env: dict[str, str], artifacts: Path) -> Iterator[str]:
    proc = start_api(farm_env, artifacts / "api-client.log")
    yield f"http://127.0.0.1:{API_PORT}"
    proc.stop()


@pytest.fixture()
def farm_client(api_url: str, api_key: Key) -> Iterator[sdk.Client]:
    with sdk.Client(api_url, api_key.key) as c:
        yield c


def run_cli(
    args: list[str], api_url: str, key: Key, timeout: float = 180, **kw: Any
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_API_URL=api_url, FARM_API_KEY=key.key)
    return subprocess.run(
        [FARM, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


# --- SDK against the real farm ----------------------------------------------------------------


def test_sdk_submit_wait_download(farm_client: sdk.Client, worker: Process, tmp_path: Path) -> None:
    # Given a tiny scene in a file
    scene = tmp_path / "tiny.py"
    scene.write_text(ok_scene(unique()))
    # When it is submitted from the path and waited for
    submitted = farm_client.submit(
        scene, "Tiny", quality="low", aspect_ratio="9:16", metadata={"run": "sdk"}
    )
    assert submitted.job_id.startswith("job_") and submitted.status == "queued"
    seen: list[sdk.Job] = []
    job = farm_client.wait(submitted.job_id, timeout=180, on_progress=seen.append)
    # Then it completed, progress was reported, and the files download
    assert job.succeeded, job.error
    assert job.result is not None and job.result.captions
    assert job.metadata == {"run": "sdk"} and job.aspect_ratio == "9:16"
    assert seen[-1] == job and all(s.progress is not None for s in seen)
    assert job.progress == sdk.Progress(job.progress.chunks_done, job.progress.chunks_total, 1.0)
    files = farm_client.download(job.job_id, tmp_path / "out")
    assert files.video == tmp_path / "out" / f"{job.job_id}.mp4"
    assert files.video.read_bytes()[4:8] == b"ftyp"
    assert files.thumbnail is not None and files.thumbnail.read_bytes()[:2] == b"\xff\xd8"
    assert files.captions is not None and "a tiny square" in files.captions.read_text()
    assert not list((tmp_path / "out").glob("*.part"))
    assert farm_client.get(job.job_id) == job


def test_sdk_failed_scene_and_logs(farm_client: sdk.Client, worker: Process) -> None:
    message = f"scene says no {unique()}"
    job = farm_client.wait(
        farm_client.submit(failing_scene(message), "Broken", quality="low").job_id, timeout=120
    )
    assert job.failed and job.result is None
    assert job.error is not None and message in job.error
    logs = farm_client.logs(job.job_id)
    assert logs.job_id == job.job_id and isinstance(logs.truncated, bool)


def test_sdk_cancel(farm_client: sdk.Client, worker: Process) -> None:
    submitted = farm_client.submit(SLOW_SCENE + f"# {unique()}\n", "Slow", quality="low")
    job = farm_client.cancel(submitted.job_id)
    assert job.failed and job.error == "canceled"
    # Cancelling an ended job is harmless and returns it as it is
    assert farm_client.cancel(submitted.job_id).error == "canceled"
    assert farm_client.wait(submitted.job_id, timeout=5).error == "canceled"


def test_sdk_list_pagination(api_url: str, make_key: Any) -> None:
    key = make_key()
    c = sdk.Client(api_url, key.key)
    ids = []
    for i in range(5):
        ids.append(c.submit(f"{SLOW_SCENE}# page {i} {unique()}\n", "Slow", quality="low").job_id)
        c.cancel(ids[-1])  # nothing needs to render: listing is the point
    newest_first = ids[::-1]
    first = c.list(limit=2)
    assert [j.job_id for j in first.jobs] == newest_first[:2] and first.next_cursor
    second = c.list(limit=2, cursor=first.next_cursor)
    assert [j.job_id for j in second.jobs] == newest_first[2:4]
    third = c.list(limit=2, cursor=second.next_cursor)
    assert [j.job_id for j in third.jobs] == newest_first[4:] and third.next_cursor is None
    assert [j.job_id for j in c.iter_jobs(page_size=2)] == newest_first
    assert c.list(status="completed").jobs == []
    assert len(c.list(status="failed", limit=100).jobs) == 5
    with pytest.raises(sdk.NotFoundError):
        c.list(cursor="job_nope")
    with pytest.raises(sdk.ValidationError) as info:
        c.list(limit=1000)
    assert "limit" in info.value.message


def test_sdk_error_types(api_url: str, farm_client: sdk.Client, make_key: Any) -> None:
    with pytest.raises(sdk.UnauthorizedError) as unauthorized:
        sdk.Client(api_url, "mrf_not_a_key").me()
    assert unauthorized.value.status == 401 and unauthorized.value.code == "unauthorized"
    assert isinstance(unauthorized.value, sdk.FarmApiError)
    with pytest.raises(sdk.ValidationError) as invalid:
        farm_client.submit(ok_scene("x"), "not-a-class")
    assert invalid.value.status == 400 and "className" in invalid.value.message
    with pytest.raises(sdk.NotFoundError):
        farm_client.get("job_000000000000000000000000")
    with pytest.raises(sdk.PayloadTooLargeError) as big:
        farm_client.submit("#" * 300_000, "Tiny")
    assert big.value.status == 413
    key = f"idem-{unique()}"
    first = farm_client.submit(SLOW_SCENE, "Slow", quality="low", idempotency_key=key)
    farm_client.cancel(first.job_id)
    assert (
        farm_client.submit(SLOW_SCENE, "Slow", quality="low", idempotency_key=key).job_id
        == first.job_id
    )
    with pytest.raises(sdk.ConflictError):
        farm_client.submit(SLOW_SCENE, "Slow", quality="medium", idempotency_key=key)
    with pytest.raises(sdk.InsufficientCreditsError) as poor:
        sdk.Client(api_url, make_key(credits=0).key).submit(ok_scene("x"), "Tiny")
    assert poor.value.status == 402
    me = farm_client.me()
    assert me.key_id and me.credits is not None


def test_openapi_lists_the_job_list(api_url: str) -> None:
    spec = requests.get(f"{api_url}/api/v2/openapi.json", timeout=10).json()
    get = spec["paths"]["/api/v2/render"]["get"]
    assert {p["name"] for p in get["parameters"]} >= {"status", "limit", "cursor"}
    assert "JobList" in json.dumps(get["responses"]["200"])


# --- the CLI against the real farm ------------------------------------------------------------


def test_cli_render_wait_download(
    api_url: str, api_key: Key, worker: Process, tmp_path: Path
) -> None:
    scene = tmp_path / "scene.py"
    scene.write_text(ok_scene(unique()))
    out = tmp_path / "out"
    run = run_cli(
        ["render", str(scene), "Tiny", "-q", "low", "--aspect", "9:16", "--wait", "-o", str(out)],
        api_url,
        api_key,
    )
    assert run.returncode == 0, run.stderr
    paths = [Path(p) for p in run.stdout.split()]
    assert sorted(p.suffix for p in paths) == [".jpg", ".mp4", ".vtt"]
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    assert "submitted job_" in run.stderr and "chunks" in run.stderr and "elapsed" in run.stderr
    job_id = paths[0].stem

    status = run_cli(["status", job_id], api_url, api_key)
    assert status.returncode == 0 and "completed" in status.stdout
    as_json = json.loads(run_cli(["status", job_id, "--json"], api_url, api_key).stdout)
    assert as_json["jobId"] == job_id and as_json["aspectRatio"] == "9:16"
    logs = run_cli(["logs", job_id], api_url, api_key)
    assert logs.returncode == 0
    table = run_cli(["jobs", "--limit", "5"], api_url, api_key)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["JOB", "STATUS", "QUALITY"]
    assert job_id in table.stdout


def test_cli_failed_scene_exits_nonzero(
    api_url: str, api_key: Key, worker: Process, tmp_path: Path
) -> None:
    message = f"the scene broke on purpose {unique()}"
    scene = tmp_path / "broken.py"
    scene.write_text(failing_scene(message))
    run = run_cli(["render", str(scene), "Broken", "-q", "low", "--wait"], api_url, api_key)
    assert run.returncode == 1
    assert "failed" in run.stderr and message in run.stderr
    job_id = run.stderr.split("submitted ")[1].split()[0]
    status = run_cli(["status", job_id], api_url, api_key)
    assert status.returncode == 1 and message in status.stdout


def test_cli_without_wait_prints_the_id(api_url: str, api_key: Key, tmp_path: Path) -> None:
    scene = tmp_path / "slow.py"
    scene.write_text(SLOW_SCENE + f"# {unique()}\n")
    run = run_cli(["render", str(scene), "Slow", "-q", "low"], api_url, api_key)
    assert run.returncode == 0 and run.stdout.strip().startswith("job_")
    canceled = run_cli(["cancel", run.stdout.strip()], api_url, api_key)
    assert canceled.returncode == 0 and "canceled" in canceled.stdout


def test_cli_ctrl_c_asks_and_cancels(
    api_url: str, api_key: Key, worker: Process, tmp_path: Path
) -> None:
    scene = tmp_path / "slow.py"
    scene.write_text(SLOW_SCENE + f"# {unique()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_API_URL=api_url, FARM_API_KEY=api_key.key)
    proc = subprocess.Popen(
        [FARM, "render", str(scene), "Slow", "-q", "low", "--wait"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdin is not None
    first = proc.stderr.readline()  # "submitted job_... (queued)"
    job_id = first.split()[1]
    time.sleep(1.5)  # inside the wait loop
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("y\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"cancel job {job_id}?" in err and "canceled" in err
    job = sdk.Client(api_url, api_key.key).get(job_id)
    assert job.failed and job.error == "canceled"


def test_cli_errors(api_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    run = subprocess.run(
        [FARM, "status", "job_x", "--url", api_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "FARM_API_KEY" in run.stderr
    run = subprocess.run(
        [FARM, "status", "job_x", "--url", api_url, "--key", "mrf_bad"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "unauthorized" in run.stderr


# --- a scripted server: retries, 429, Kodisc-shaped answers -------------------------------------


class Scripted:
    """Answers each request with the next scripted (status, headers, body); records requests."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = script
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = outer.script.pop(0) if outer.script else (500, {}, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# Kodisc's job shape: no progress, quality, aspectRatio, fps or renderer.
KODISC_DONE = {
    "jobId": "abc123",
    "endpoint": "render",
    "status": "completed",
    "creditsCost": 1.0,
    "durationMs": 4200,
    "result": {"video": "https://cdn.example/v.mp4", "thumbnail": "https://cdn.example/t.png"},
    "error": None,
    "metadata": None,
    "createdAt": "2026-01-01T00:00:00Z",
    "completedAt": "2026-01-01T00:00:05Z",
}


def _client(url: str) -> tuple[sdk.Client, list[float]]:
    c = sdk.Client(url, "k", max_retries=3, backoff=0.01)
    sleeps: list[float] = []
    c._sleep = sleeps.append
    return c, sleeps


def test_retries_5xx_then_succeeds_with_the_same_idempotency_key() -> None:
    script = [
        (503, {}, {"error": "internal_error", "message": "x"}),
        (502, {}, "bad gateway"),
        (202, {}, {"jobId": "abc123", "status": "queued", "endpoint": "render"}),
    ]
    with Scripted(script) as server:
        c, sleeps = _client(server.url)
        assert c.submit("code", "A").job_id == "abc123"
    keys = {h["Idempotency-Key"] for _, _, h in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0]  # exponential, with jitter
    assert all(h["Authorization"] == "Bearer k" for _, _, h in server.requests)


def test_gives_up_after_max_retries_with_server_error() -> None:
    with Scripted([(500, {}, {"error": "internal_error", "message": "boom"})] * 4) as server:
        c, sleeps = _client(server.url)
        with pytest.raises(sdk.ServerError) as info:
            c.get("abc123")
    assert info.value.status == 500 and info.value.message == "boom" and len(sleeps) == 3


def test_4xx_is_not_retried() -> None:
    with Scripted([(400, {}, {"error": "validation_error", "message": "code: required"})]) as s:
        c, sleeps = _client(s.url)
        with pytest.raises(sdk.ValidationError):
            c.submit("", "A")
    assert sleeps == [] and len(s.requests) == 1


def test_connection_errors_are_retried_then_raised() -> None:
    with Scripted([]) as server:
        url = server.url
    c, sleeps = _client(url)  # the port is closed now
    with pytest.raises(sdk.FarmConnectionError):
        c.get("abc123")
    assert len(sleeps) == 3


def test_unknown_codes_map_by_status() -> None:
    with Scripted(
        [(404, {}, {"detail": "nope"}), (418, {}, {"error": "teapot", "message": "short"})]
    ) as s:
        c, _ = _client(s.url)
        with pytest.raises(sdk.NotFoundError):
            c.get("x")
        with pytest.raises(sdk.FarmApiError) as info:
            c.get("x")
    assert type(info.value) is sdk.FarmApiError and info.value.code == "teapot"


def test_wait_honours_retry_after_and_reads_kodisc_jobs() -> None:
    queued = {"jobId": "abc123", "status": "queued"}
    script = [
        (200, {}, queued),
        (429, {"Retry-After": "2"}, {"error": "rate_limited", "message": "slow down"}),
        (200, {}, {**queued, "status": "running"}),
        (200, {}, KODISC_DONE),
    ]
    seen: list[sdk.Job] = []
    with Scripted(script) as server:
        c, sleeps = _client(server.url)
        job = c.wait("abc123", timeout=None, on_progress=seen.append, poll_interval=0.1)
    assert 2.0 in sleeps
    assert [j.status for j in seen] == ["queued", "running", "completed"]
    assert job.succeeded and job.progress is None and job.quality is None
    assert job.result == sdk.Result("https://cdn.example/v.mp4", "https://cdn.example/t.png")
    assert job.duration_ms == 4200


def test_wait_times_out() -> None:
    queued = {"jobId": "abc123", "status": "queued"}
    with Scripted([(200, {}, queued)] * 50) as server:
        c = sdk.Client(server.url, "k")
        started = time.monotonic()
        with pytest.raises(sdk.WaitTimeout) as info:
            c.wait("abc123", timeout=0.5, poll_interval=0.1)
    assert time.monotonic() - started < 3
    assert info.value.job is not None and info.value.job.status == "queued"


def test_cli_status_against_a_kodisc_shaped_server() -> None:
    with Scripted([(200, {}, KODISC_DONE)]) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(FARM_API_URL=server.url, FARM_API_KEY="k")
        run = subprocess.run(
            [FARM, "status", "abc123"], env=env, capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 0, run.stderr
    assert "completed" in run.stdout and "https://cdn.example/v.mp4" in run.stdout
    assert server.requests[0][1] == "/api/v2/render/abc123"


def test_progress_bar_line() -> None:
    ProgressBar = client_cli.ProgressBar

    class Tty:
        def isatty(self) -> bool:
            return False

    bar = ProgressBar(Tty(), started=0.0)  # type: ignore[arg-type]
    running = sdk.Job("j", "running", progress=sdk.Progress(1, 3, 0.25))
    assert bar.line(running, now=10.0).startswith("running")
    line = bar.line(sdk.Job("j", "running", progress=sdk.Progress(2, 3, 0.5)), now=20.0)
    assert "2/3 chunks" in line and "elapsed 0:20" in line and "ETA 0:10" in line
    assert "chunks" not in bar.line(sdk.Job("j", "queued"), now=1.0)


# --- the client as its own distribution ---------------------------------------------------------


def test_client_choices_match_the_server() -> None:
    assert client_cli.QUALITIES == presets.QUALITIES
    assert client_cli.ASPECT_RATIOS == presets.ASPECT_RATIOS


def test_client_and_server_share_one_version() -> None:
    assert (ROOT / "client" / "VERSION").resolve() == (ROOT / "VERSION").resolve()
    installed = {name: version(name) for name in ("manim-render-farm", "manim-farm-client")}
    assert set(installed.values()) == {(ROOT / "VERSION").read_text().strip()}, installed


def test_client_cli_runs_alone_as_farm_client() -> None:
    # The same commands without the server's `farm` dispatcher
    run = subprocess.run(
        [sys.executable, "-m", "farm_client.cli", "status", "--help"],
        cwd=ROOT / "client",
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT / "client")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "usage: farm-client status" in run.stdout

"""Hostile scenes through the whole farm: API, a real worker, its warm jails, S3.

Each job ends failed (or completed correctly) within a stated bound, leaves nothing of the host
in the job or in S3, and the next job on the same worker completes in normal time. The jail-level
variants of each case are in tests/test_sandbox.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm import objects
from tests.conftest import Key, _process_table, submit, wait_for
from tests.scenes import uncached

# Every case below ends within this many seconds of its submission (a 2-core machine shared
# with other suites; a quiet one needs a fraction).
BOUND = 90

ATEXIT = """
import atexit, os, shutil
from manim import *

PLANNING = []  # construct() notes the mode: manim's config is restored before atexit runs


def _after():
    planning = PLANNING[-1] if PLANNING else False
{after}

atexit.register(_after)


class Hostile(Scene):
    def construct(self):
        PLANNING.append(config.dry_run)
{construct}
"""


def _scene(construct: str, after: str = "pass") -> str:
    def indent(text: str, n: int) -> str:
        return "\n".join(" " * n + line for line in text.strip().splitlines())

    return uncached(ATEXIT.format(after=indent(after, 4), construct=indent(construct, 8)))


@pytest.fixture()
def host_secret() -> Iterator[tuple[Path, str]]:
    """A root-only host directory holding a video.mp4 and a captions.srt with a secret."""
    secret = "host-secret-" + os.urandom(8).hex()
    directory = Path(f"/tmp/farm-sec-secret-{os.urandom(4).hex()}")
    directory.mkdir(mode=0o700)
    for name in ("video.mp4", "captions.srt"):
        (directory / name).write_text(f"1\n00:00:00,000 --> 00:00:01,000\n{secret}\n")
        os.chmod(directory / name, 0o600)
    yield directory, secret
    shutil.rmtree(directory, ignore_errors=True)


def _objects(storage: Any, job_id: str) -> list[str]:
    client = storage.client
    found = client.list_objects(storage.bucket, prefix=objects.job_prefix(job_id), recursive=True)
    return [o.object_name for o in found]


def _gone(storage: Any, job_id: str, part: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while left := [o for o in _objects(storage, job_id) if part in o]:
        assert time.monotonic() < deadline, left
        time.sleep(0.3)


def _ended(client: Any, key: Key, job_id: str) -> dict[str, Any]:
    started = time.monotonic()
    job = wait_for(client, key, job_id, timeout=BOUND)
    assert time.monotonic() - started < BOUND
    return job


def _no_secret(client: Any, key: Key, storage: Any, job: dict[str, Any], secret: str) -> None:
    assert secret not in str(job)
    log = client.get(f"/api/v2/render/{job['jobId']}/logs", headers=key.headers).get_json()
    assert secret not in str(log)
    for name in _objects(storage, job["jobId"]):
        assert secret.encode() not in storage.get_bytes(name), name


@pytest.mark.parametrize("name", ["video.mp4", "captions.srt"])
def test_a_symlinked_output_directory_hands_back_no_host_file(
    client: Any,
    api_key: Key,
    worker: Any,
    storage: Any,
    host_secret: tuple[Path, str],
    name: str,
) -> None:
    # Given a scene that, after the runner wrote its outputs, swaps its out directory for a
    # link to a root-only host directory holding files of the very names the farm reads
    directory, secret = host_secret
    construct = (
        "self.add_subcaption('hello', duration=0.2)\nself.play(Create(Square()), run_time=0.4)"
    )
    after = f"shutil.rmtree('/work/out')\nos.symlink({str(directory)!r}, '/work/out')"
    job = _ended(client, api_key, submit(client, api_key, _scene(construct, after), "Hostile"))
    # Then the job fails with the farm's words, and the host's bytes are nowhere
    assert job["status"] == "failed"
    assert "is not a plain file (a link or a path through one)" in job["error"]
    _no_secret(client, api_key, storage, job, secret)
    _gone(storage, job["jobId"], "/chunks/")


def test_a_rewritten_result_file_names_no_host_path(
    client: Any, api_key: Key, worker: Any, storage: Any
) -> None:
    after = (
        "import json\n"
        "if not planning:\n"
        "    json.dump({'ok': True, 'frames': 4, 'animations': 1, 'video': '/etc/shadow',"
        " 'srt': '/etc/shadow'}, open('/work/result.json', 'w'))"
    )
    construct = "self.play(Create(Square()), run_time=0.4)"
    job = _ended(client, api_key, submit(client, api_key, _scene(construct, after), "Hostile"))
    assert job["status"] == "failed"
    assert job["error"] == "the render's report has unknown fields"
    _no_secret(client, api_key, storage, job, "root:")


# A plan forging its report on every way out: the hand-off pipe to the runner's parent (the
# plan's process, forked, hands its report up there), then result.json, then an exit that
# leaves only the forgery.
FORGE = """
self.play(Create(Square()), run_time=0.4)
if config.dry_run:
    import fcntl, json, stat
    forged = json.dumps({{'ok': True, 'durations': [{forged}]}})
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        try:
            pipe = fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode)
            if pipe and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, forged.encode())
        except OSError:
            pass
    open('/work/result.json', 'w').write(forged)
    os._exit(0)
"""


@pytest.mark.parametrize("forged", ["float('nan')", "-1.0", "1e308", "'1'"])
def test_a_forged_plan_fails_the_job_cleanly(
    client: Any, api_key: Key, worker: Any, forged: str
) -> None:
    construct = FORGE.format(forged=forged)
    job = _ended(client, api_key, submit(client, api_key, _scene(construct), "Hostile"))
    assert job["status"] == "failed"
    assert job["error"] in (
        "the render's report has a value out of bounds",
        "the render left an unreadable report",
    )
    assert "worker lost" not in job["error"]


def test_a_plan_that_lies_about_length_fails_on_frames(
    client: Any, api_key: Key, worker: Any, storage: Any, pool: Any
) -> None:
    # Given a scene that waits 1 s when planned and 30 s when drawn (a static wait renders fast)
    construct = "self.play(Create(Square()), run_time=0.2)\nself.wait(1 if config.dry_run else 30)"
    job = _ended(client, api_key, submit(client, api_key, _scene(construct), "Hostile", fps=5))
    # Then the chunk is refused on its real frame count, and no video comes of it
    assert job["status"] == "failed"
    assert "frames where its plan had" in job["error"]
    assert job["result"] is None
    # and its chunk objects are gone once the failing worker (and any chunk still in flight,
    # whose record is refused) has cleaned up, within seconds of the end
    _gone(storage, job["jobId"], ".mp4")


def test_a_self_sigkill_is_charged_and_not_retried(
    client: Any, api_key: Key, worker: Any, pool: Any
) -> None:
    construct = (
        "self.play(Create(Square()), run_time=0.2)\n"
        "if not config.dry_run:\n"
        "    t = time.time()\n"
        "    while time.time() - t < 2:\n"
        "        pass\n"
        "    os.kill(os.getpid(), 9)"
    )
    code = _scene(construct).replace("import atexit, os, shutil", "import atexit, os, shutil, time")
    job = _ended(client, api_key, submit(client, api_key, code, "Hostile"))
    assert job["status"] == "failed"
    assert job["error"] == "the render process was killed (SIGKILL)"
    assert job["creditsCost"] > 0
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT max(attempt) AS n FROM steps WHERE job_id = %s AND kind = 'chunk'",
            (job["jobId"],),
        ).fetchone()
    assert row["n"] == 1


def test_after_all_that_the_next_job_completes_and_no_jail_is_left(
    client: Any, api_key: Key, worker: Any
) -> None:
    started = time.monotonic()
    construct = "self.play(Create(Square()), run_time=0.4)"
    job = wait_for(client, api_key, submit(client, api_key, _scene(construct), "Hostile"))
    assert job["status"] == "completed", job["error"]
    assert time.monotonic() - started < 60
    # Only the warm jails waiting for the next step remain (per worker slot, one render jail and
    # one media jail)
    parent, _ = _process_table()
    descendants = {worker.proc.pid}
    for _ in range(5):
        descendants |= {pid for pid, up in parent.items() if up in descendants}
    left = [
        p for p in Path("/tmp").glob("farm-jail-*") if p.name.split("-")[2] in map(str, descendants)
    ]
    assert len(left) <= 4, left

"""Adversarial scenes against the render sandbox itself (real bubblewrap, real processes).

Each scene runs through ``Sandbox.run`` exactly as a worker runs it, with tight limits so the
suite stays fast; ``workers.tasks._failure`` then names the outcome the job would get.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.config import load_settings
from workers.sandbox import (
    Limits,
    OutputError,
    RunResult,
    Sandbox,
    WarmJail,
    checked_output,
    read_output,
)
from workers.stitch import probe
from workers.tasks import _failure

SETTINGS = load_settings({}).with_(
    chunk_max_disk_mb=64,
    chunk_max_files=2000,
    chunk_max_processes=48,
    chunk_log_bytes=64 * 1024,
)


def _scene(body: str, header: str = "") -> str:
    lines = "\n".join("        " + line for line in body.strip().splitlines())
    return (
        f"import os, sys, time, socket\n{header}\nfrom manim import *\n\n"
        f"class S(Scene):\n    def construct(self):\n{lines}\n"
        "        self.play(Create(Square()), run_time=0.2)\n"
    )


def _run(
    tmp_path: Path,
    body: str,
    *,
    wall: float = 20,
    mode: str = "render",
    header: str = "",
    **overrides: Any,
) -> RunResult:
    limits = Limits.from_settings(SETTINGS, wall_seconds=wall)
    if overrides:
        limits = Limits(**{**vars(limits), **overrides})
    return Sandbox(SETTINGS).run(mode, _spec(body, header), tmp_path / "scratch", limits)


def _spec(body: str, header: str = "") -> dict[str, Any]:
    return {
        "code": _scene(body, header),
        "class_name": "S",
        "width": 320,
        "height": 180,
        "fps": 10,
        "portrait": False,
        "renderer": "cairo",
    }


def _outcome(run: RunResult, **overrides: Any) -> tuple[str, str] | None:
    limits = Limits.from_settings(SETTINGS)
    return _failure(run, Limits(**{**vars(limits), **overrides}) if overrides else limits)


@pytest.fixture()
def tmp_path() -> Iterator[Path]:
    """Scratch under /tmp itself: the jail's uid must be able to traverse to its bind source."""
    path = Path(tempfile.mkdtemp(prefix="farm-sandbox-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


pytestmark = pytest.mark.skipif(
    SETTINGS.sandbox != "bwrap", reason="these tests exercise the bubblewrap sandbox"
)


def _live_processes(uid: int, settle_seconds: float = 5) -> list[str]:
    """Processes of the jail's uid that are not zombies (an orphan zombie is already dead),
    after giving the kernel a moment to finish killing a torn-down namespace."""
    deadline = time.monotonic() + settle_seconds
    while True:
        out = subprocess.run(["ps", "-e", "-o", "uid=,stat=,args="], capture_output=True, text=True)
        live = [
            line
            for line in out.stdout.splitlines()
            if line.split()[0] == str(uid) and not line.split()[1].startswith("Z")
        ]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def test_a_plain_scene_renders(tmp_path: Path) -> None:
    run = _run(tmp_path, "pass")
    assert run.ok, run.log
    checked_output(tmp_path / "scratch", str(run.result["video"]), 10**8)  # type: ignore[index]


def test_fork_bomb_is_contained(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        """
pids = []
while True:
    pids.append(os.fork())
    if pids[-1] == 0:
        time.sleep(60)
        os._exit(0)
""",
    )
    error, kind = _outcome(run)  # type: ignore[misc]
    assert kind == "scene_error"
    assert "Resource temporarily unavailable" in error or "BlockingIOError" in error
    # Every process of the bomb died with the sandbox.
    assert _live_processes(Sandbox(SETTINGS).uid) == []


def test_memory_hog_fails_cleanly(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        "hog = []\nwhile True:\n    hog.append(bytearray(50 * 2**20))",
        memory_bytes=1536 * 2**20,
    )
    error, kind = _outcome(run)  # type: ignore[misc]
    assert kind == "scene_error" and "MemoryError" in error


def test_busy_loop_times_out(tmp_path: Path) -> None:
    run = _run(tmp_path, "while True:\n    pass", wall=3)
    assert run.stopped == "timeout"
    assert _outcome(run, wall_seconds=3) == ("render timed out after 3 s", "timeout")


def test_cpu_limit_stops_a_busy_loop(tmp_path: Path) -> None:
    run = _run(tmp_path, "while True:\n    pass", wall=30, cpu_seconds=3)
    assert run.signal in (signal.SIGXCPU, signal.SIGKILL) or run.returncode != 0
    assert run.stopped is None  # the kernel stopped it, not the wall clock


def test_sleep_forever_times_out(tmp_path: Path) -> None:
    run = _run(tmp_path, "time.sleep(10**9)", wall=2)
    assert run.stopped == "timeout"


def test_reading_stdin_gets_end_of_file_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    run = _run(tmp_path, "print('stdin said', repr(sys.stdin.read()))", wall=10)
    assert run.stopped is None and time.monotonic() - started < 10
    assert "stdin said ''" in run.log


def test_filling_the_disk_is_stopped(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        """
with open('big.bin', 'wb') as f:
    while True:
        f.write(b'x' * 2**20)
        f.flush()
""",
    )
    assert run.stopped == "disk"
    error, kind = _outcome(run)  # type: ignore[misc]
    assert kind == "scene_error" and "more than 64 MB" in error


def test_file_size_limit(tmp_path: Path) -> None:
    run = _run(tmp_path, "open('f', 'wb').write(b'x' * 3 * 2**20)", file_bytes=2**20)
    error, kind = _outcome(run)  # type: ignore[misc]
    assert kind == "scene_error" and "File too large" in error


def test_million_small_files_are_stopped(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        """
os.makedirs('many', exist_ok=True)
for i in range(10**6):
    open(f'many/{i}', 'w').close()
""",
    )
    assert run.stopped == "files"
    assert _outcome(run)[1] == "scene_error"  # type: ignore[index]


def test_printing_forever_is_capped(tmp_path: Path) -> None:
    run = _run(tmp_path, "while True:\n    print('spam' * 1000)", wall=4)
    assert run.stopped == "timeout"
    assert len(run.log) <= 64 * 1024 + 200
    assert "[log truncated:" in run.log


def test_no_network_not_even_the_farms_own_services(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        """
for port in (5432, 6379, 8333, 8000):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(('127.0.0.1', port))
        print('CONNECTED', port)
    except OSError as exc:
        print('refused', port, type(exc).__name__)
print('interfaces', sorted(name for _, name in socket.if_nameindex()))
try:
    socket.getaddrinfo('example.com', 443)
    print('RESOLVED')
except OSError:
    print('no dns')
""",
    )
    assert run.ok, run.log
    assert "CONNECTED" not in run.log and "RESOLVED" not in run.log
    assert run.log.count("refused") == 4
    assert "interfaces ['lo']" in run.log


def test_worker_environment_and_files_are_invisible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-" + os.urandom(8).hex()
    monkeypatch.setenv("FARM_S3_SECRET_KEY", canary)
    secret_file = tmp_path / "worker-config.env"
    secret_file.write_text(canary)
    os.chmod(secret_file, 0o644)
    run = _run(
        tmp_path,
        f"""
print('env', dict(os.environ))
for path in ['/proc/1/environ', '/proc/self/environ', '/proc/2/environ']:
    try:
        print(path, open(path, 'rb').read())
    except OSError as exc:
        print(path, 'ERR', exc)
for path in [{str(secret_file)!r}, '/root/.bash_history', '/etc/shadow', '/etc/passwd',
             '/etc/postgresql', '/var/lib/postgresql', {str(Path.cwd())!r}]:
    print(path, os.path.exists(path))
""",
    )
    assert run.ok, run.log
    assert canary not in run.log
    assert "FARM_" not in run.log
    assert f"{secret_file} False" in run.log
    assert "/etc/shadow False" in run.log and "/var/lib/postgresql False" in run.log
    assert f"{Path.cwd()} False" in run.log


def test_other_jobs_files_and_processes_are_invisible(tmp_path: Path) -> None:
    neighbour = tmp_path / "neighbour"
    (neighbour / "out").mkdir(parents=True)
    (neighbour / "out" / "secret.mp4").write_text("other job")
    os.chmod(tmp_path, 0o755)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        run = _run(
            tmp_path,
            f"""
print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
print('neighbour', os.path.exists({str(neighbour)!r}))
try:
    os.kill({sleeper.pid}, 9)
    print('KILLED')
except ProcessLookupError:
    print('no such process')
try:
    os.kill(-1, 9)
except OSError:
    pass
""",
        )
        assert "KILLED" not in run.log and "no such process" in run.log
        assert "neighbour False" in run.log
        pids = eval(run.log.split("pids ")[1].splitlines()[0])
        assert max(pids) < 50  # its own pid namespace: only its own few processes
        assert sleeper.poll() is None  # kill(-1) reached nothing outside
    finally:
        sleeper.kill()
        sleeper.wait()


def test_segfault_fails_cleanly(tmp_path: Path) -> None:
    run = _run(tmp_path, "import ctypes\nctypes.string_at(0)")
    error, kind = _outcome(run)  # type: ignore[misc]
    assert kind == "scene_error" and "SIGSEGV" in error


def test_exit_before_rendering(tmp_path: Path) -> None:
    error, kind = _outcome(_run(tmp_path, "sys.exit(0)"))  # type: ignore[misc]
    assert kind == "scene_error" and "SystemExit: 0" in error
    # os._exit skips every handler: the runner never reports
    error, kind = _outcome(_run(tmp_path, "os._exit(0)"))  # type: ignore[misc]
    assert kind == "scene_error" and "exited before rendering finished (exit code 0)" in error


def test_a_daemon_dies_with_the_sandbox(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '300'])
    os._exit(0)
""",
    )
    assert run.ok, run.log
    time.sleep(0.5)
    assert _live_processes(Sandbox(SETTINGS).uid) == []


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_symlink_or_fifo_instead_of_the_video_is_refused(tmp_path: Path, kind: str) -> None:
    # The scene swaps its own output after the runner reported it (atexit runs last).
    make = "os.symlink('/etc/passwd', p)" if kind == "symlink" else "os.mkfifo(p)"
    header = f"""
import atexit, glob
def _swap():
    for p in glob.glob('/work/out/videos/*.mp4'):
        os.remove(p)
        {make}
atexit.register(_swap)
"""
    run = _run(tmp_path, "pass", header=header)
    assert run.ok
    video = str(run.result["video"])  # type: ignore[index]
    with pytest.raises(OutputError, match="not a regular file"):
        checked_output(tmp_path / "scratch", video, 10**8)


def test_output_paths_outside_the_out_dir_are_refused(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "out").mkdir(parents=True)
    for bad in ("/etc/passwd", "/work/out/../spec.json", "../../etc/passwd"):
        with pytest.raises(OutputError):
            checked_output(scratch, bad, 10**6)
    (scratch / "out" / "big").write_bytes(b"x" * 100)
    with pytest.raises(OutputError, match="larger"):
        read_output(scratch / "out" / "big", 10)


def test_absurd_settings_from_inside_the_scene_are_overridden(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        "pass",
        header=(
            "from manim import config\nconfig.pixel_width = 20000\nconfig.pixel_height = 20000\n"
            "config.frame_rate = 5000\n"
        ),
    )
    assert run.ok, run.log
    video = checked_output(tmp_path / "scratch", str(run.result["video"]), 10**8)  # type: ignore[index]
    info = probe(video)
    assert (info["width"], info["height"], info["fps"]) == (320, 180, 10)


def test_warm_jail_is_as_isolated_and_reads_no_stdin() -> None:
    """The pre-started jail the workers use: same walls, and stdin is closed before the scene."""
    limits = Limits.from_settings(SETTINGS, wall_seconds=20)
    jail = WarmJail(Sandbox(SETTINGS), limits)
    try:
        time.sleep(1)  # let it import manim, as it would while the worker idles
        spec = _spec("""
print('stdin said', repr(sys.stdin.read()))
print('env', sorted(os.environ))
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', 6379))
    print('CONNECTED')
except OSError:
    print('refused')
""")
        run = jail.run("render", spec, limits)
    finally:
        jail.close()
    assert run.ok, run.log
    assert "stdin said ''" in run.log and "refused" in run.log and "CONNECTED" not in run.log
    assert "FARM_" not in run.log
    assert not jail.dir.exists()  # closed: nothing of the job stays on disk

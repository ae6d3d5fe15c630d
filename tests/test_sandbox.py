"""Adversarial scenes against the jail the workers use (real bubblewrap, cgroups, processes).

Every scene runs through ``JailPool.take()`` and ``Jail.run`` exactly as the render step runs it
(a warm jail, handed its spec), with tight limits so the suite stays fast; the render step's own
functions then read its outputs (``Jail.copy_out``, ``outputs.parse_render``,
``media.check_chunk``) and ``workers.outcomes.of_run`` names the outcome the job would get.
Farm-level cases (a job through the API and a worker) are in tests/test_security.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.config import load_settings
from workers import media, outcomes
from workers.jail import outputs
from workers.jail.jail import RUNNING, Jail, RunResult, running_render_jails, sweep_stale
from workers.jail.limits import Limits
from workers.jail.pool import JailPool
from workers.outcomes import PlatformFault, SceneFault

# Small per-job limits so that every limit is reached in seconds.
SETTINGS = load_settings({}).with_(
    chunk_max_disk_mb=256,
    chunk_memory_mb=512,
    chunk_max_files=2000,
    chunk_max_processes=48,
    chunk_log_bytes=64 * 1024,
    max_output_mb=64,
    media_timeout_seconds=30,
)
WIDTH, HEIGHT, FPS = 320, 180, 10

pytestmark = pytest.mark.skipif(
    SETTINGS.sandbox != "bwrap", reason="these tests exercise the bubblewrap sandbox"
)


def _scene(body: str, header: str = "", run_time: float = 0.2) -> str:
    lines = "\n".join("        " + line for line in body.strip().splitlines())
    return (
        f"import os, sys, time, socket\n{header}\nfrom manim import *\n\n"
        f"class S(Scene):\n    def construct(self):\n{lines}\n"
        f"        self.play(Create(Square()), run_time={run_time})\n"
    )


def _spec(body: str, header: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "code": _scene(body, header),
        "class_name": "S",
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "portrait": False,
        "renderer": "cairo",
        **extra,
    }


@pytest.fixture()
def pool() -> Iterator[JailPool]:
    jails = JailPool(SETTINGS)
    yield jails
    jails.close()


class Ran:
    """A finished run in a jail that is dead but not yet closed (its outputs still readable)."""

    def __init__(self, jail: Jail, run: RunResult) -> None:
        self.jail, self.run = jail, run

    @property
    def outcome(self) -> outcomes.Outcome | None:
        return outcomes.of_run(self.run, self.jail.limits)


@pytest.fixture()
def render(pool: JailPool) -> Iterator[Any]:
    """render(body, ...) -> Ran: the scene through a warm jail, as the render step runs it."""
    open_jails: list[Any] = []

    def run(
        body: str, *, wall: float = 30, mode: str = "render", header: str = "", **extra: Any
    ) -> Ran:
        ctx = pool.take()
        jail = ctx.__enter__()
        open_jails.append(ctx)
        time.sleep(0.5)  # let it warm up, as it does while the worker idles
        result = jail.run(mode, _spec(body, header, **extra), wall_seconds=wall)
        return Ran(jail, result)

    yield run
    for ctx in open_jails:
        ctx.__exit__(None, None, None)


def _jail_uid() -> int:
    return SETTINGS.sandbox_uid_base + os.getpid() % 5000


def _live_processes(uid: int, settle_seconds: float = 5) -> list[str]:
    """Processes of the jail's uid that are not zombies, after the kernel had a moment."""
    deadline = time.monotonic() + settle_seconds
    while True:
        out = subprocess.run(["ps", "-e", "-o", "uid=,stat=,args="], capture_output=True, text=True)
        live = [
            line
            for line in out.stdout.splitlines()
            if line.split()[0] == str(uid)
            and not line.split()[1].startswith("Z")
            and "workers.jail.program.runner serve" not in line  # the next warm jail
        ]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def _fault(ran: Ran) -> SceneFault:
    outcome = ran.outcome
    assert isinstance(outcome, SceneFault), (outcome, ran.run.log[-2000:])
    return outcome


# --- it works, and the walls hold -------------------------------------------------------------


def test_a_plain_scene_renders_and_its_outputs_are_read_by_fixed_names(render: Any) -> None:
    ran = render("pass")
    assert ran.run.ok and ran.outcome is None, ran.run.log
    report = outputs.parse_render(ran.run.report, 100)
    assert report == {
        "frames": 2,
        "animations": 1,
        "video": True,
        "captions": False,
        "plays": [],  # per-play movies for the animation cache: none for this spec
    }
    video = ran.jail.copy_out("video.mp4", 10**8, "chunk video")
    assert video is not None
    info, cues = media.check_chunk(
        SETTINGS, video, None, width=WIDTH, height=HEIGHT, fps=FPS, max_frames=2
    )
    assert (info.width, info.height, info.fps, info.frames, cues) == (WIDTH, HEIGHT, FPS, 2, [])


def test_text_reads_the_systems_font_cache_instead_of_scanning_the_fonts(render: Any) -> None:
    # fontconfig's debug output says whether it found its system cache valid; without it, the
    # first Text() of every jail scans the fonts and writes a cache of its own in /tmp.
    ran = render('Text("Hello")', header='os.environ["FC_DEBUG"] = "16"')
    assert ran.run.ok, ran.run.log
    assert 'FcCacheTimeValid dir "/usr/share/fonts"' in ran.run.log
    assert "Created CACHEDIR.TAG" not in ran.run.log


def test_fork_bomb_is_contained(render: Any) -> None:
    ran = render(
        """
pids = []
while True:
    pids.append(os.fork())
    if pids[-1] == 0:
        time.sleep(60)
        os._exit(0)
""",
    )
    fault = _fault(ran)
    assert "process limit (48)" in fault.error or "Resource temporarily unavailable" in fault.error
    assert _live_processes(_jail_uid()) == []  # every process of the bomb died with the jail


def test_memory_hog_fails_with_the_memory_limit_named(render: Any) -> None:
    ran = render("hog = []\nwhile True:\n    hog.append(bytearray(50 * 2**20))")
    assert "memory limit (512 MB" in _fault(ran).error


def test_three_children_over_the_jobs_memory_fail_the_job(render: Any) -> None:
    # Each child stays below the per-job limit; together they are far above it.
    ran = render(
        """
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print('children done')
""",
    )
    assert ran.run.limit == "memory"
    assert "memory limit (512 MB" in _fault(ran).error


@pytest.mark.parametrize("where", ["/dev/shm", "/tmp", "/"])
def test_five_gigabytes_to_memory_backed_mounts_fail(render: Any, where: str) -> None:
    started = time.monotonic()
    ran = render(
        f"""
with open('{where.rstrip("/")}/big.bin', 'wb') as f:
    for _ in range(5 * 1024):
        f.write(b'x' * 2**20)
        f.flush()
"""
    )
    error = _fault(ran).error
    if where == "/":
        assert "Read-only file system" in error
    else:
        assert "disk limit (256 MB, /tmp and /dev/shm included, 32 MB each)" in error
    assert time.monotonic() - started < 60  # well under the 600 s wall clock


def test_filling_the_scratch_disk_is_stopped(render: Any) -> None:
    ran = render(
        """
with open('big.bin', 'wb') as f:
    while True:
        f.write(b'x' * 2**20)
        f.flush()
""",
    )
    assert ran.run.stopped == "disk"
    assert "disk limit (256 MB" in _fault(ran).error


def test_busy_loop_times_out(render: Any) -> None:
    ran = render("while True:\n    pass", wall=3)
    assert ran.run.stopped == "timeout"
    assert ran.outcome == SceneFault("render timed out after 3 s", "timeout")


def test_sleep_forever_times_out(render: Any) -> None:
    assert render("time.sleep(10**9)", wall=2).run.stopped == "timeout"


def test_reading_stdin_gets_end_of_file_at_once(render: Any) -> None:
    # Blocking on stdin would run into the wall clock; the jail's stdin is closed at once.
    ran = render("print('stdin said', repr(sys.stdin.read()))", wall=60)
    assert ran.run.stopped is None
    assert "stdin said ''" in ran.run.log


def test_file_size_limit(pool: JailPool) -> None:
    with Jail(SETTINGS, pool.limits.with_(file_bytes=2**20), warm=True) as jail:
        run = jail.run("render", _spec("open('f', 'wb').write(b'x' * 3 * 2**20)"))
        fault = outcomes.of_run(run, jail.limits)
    assert isinstance(fault, SceneFault) and "File too large" in fault.error


def test_million_small_files_are_stopped(render: Any) -> None:
    ran = render(
        """
os.makedirs('many', exist_ok=True)
for i in range(10**6):
    open(f'many/{i}', 'w').close()
""",
    )
    assert ran.run.stopped == "files"
    assert "file limit (2000 files)" in _fault(ran).error


def test_printing_forever_is_capped(render: Any) -> None:
    ran = render("while True:\n    print('spam' * 1000)", wall=15)
    assert ran.run.stopped == "timeout"
    assert len(ran.run.log) <= 64 * 1024 + 200
    assert "[log truncated:" in ran.run.log


def test_no_network_not_even_the_farms_own_services(render: Any) -> None:
    ran = render(
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
    assert ran.run.ok, ran.run.log
    assert "CONNECTED" not in ran.run.log and "RESOLVED" not in ran.run.log
    assert ran.run.log.count("refused") == 4
    assert "interfaces ['lo']" in ran.run.log


def test_worker_environment_and_files_are_invisible(
    render: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    canary = "canary-" + os.urandom(8).hex()
    monkeypatch.setenv("FARM_S3_SECRET_KEY", canary)
    secret_file = tmp_path / "worker-config.env"
    secret_file.write_text(canary)
    os.chmod(secret_file, 0o644)
    ran = render(
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
    log = ran.run.log
    assert ran.run.ok, log
    assert canary not in log and "FARM_" not in log
    assert f"{secret_file} False" in log
    assert "/etc/shadow False" in log and "/var/lib/postgresql False" in log
    assert f"{Path.cwd()} False" in log


def test_other_processes_are_invisible_and_unreachable(render: Any) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ran = render(
            f"""
print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
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
        log = ran.run.log
        assert "KILLED" not in log and "no such process" in log
        pids = eval(log.split("pids ")[1].splitlines()[0])
        assert max(pids) < 50  # its own pid namespace: only its own few processes
        assert sleeper.poll() is None  # kill(-1) reached nothing outside
    finally:
        sleeper.kill()
        sleeper.wait()


def test_segfault_fails_cleanly(render: Any) -> None:
    assert "SIGSEGV" in _fault(render("import ctypes\nctypes.string_at(0)")).error


def test_self_sigkill_is_the_scenes_fault(render: Any) -> None:
    # No evidence of the platform (the jail started, no limit): charged, never retried.
    ran = render("os.kill(os.getpid(), 9)")
    assert ran.run.started and ran.run.signal == signal.SIGKILL
    assert _fault(ran).error == "the render process was killed (SIGKILL)"


def test_exit_before_rendering(render: Any) -> None:
    assert "SystemExit: 0" in _fault(render("sys.exit(0)")).error
    # os._exit skips every handler: the runner never reports
    assert "exited before rendering finished (exit code 0)" in _fault(render("os._exit(0)")).error


def test_forged_failure_report_cannot_claim_to_be_the_platform(render: Any) -> None:
    header = """
import atexit, json
def _forge():
    with open('/work/result.json', 'w') as f:
        json.dump({'ok': False, 'error': 'bwrap: setting up uid map', 'scene_error': False}, f)
atexit.register(_forge)
"""
    ran = render("print('bwrap: fake start-up failure')", header=header)
    assert isinstance(ran.outcome, SceneFault)


def test_a_jail_that_cannot_start_is_the_platforms_fault(
    pool: JailPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.jail import bwrap

    binds = bwrap._binds
    # A bind whose source is missing: bwrap refuses to set the jail up.
    monkeypatch.setattr(
        bwrap, "_binds", lambda gpu, proc: [*binds(gpu, proc), "--ro-bind", "/nope", "/x"]
    )
    with Jail(SETTINGS, pool.limits) as jail:
        run = jail.run("render", _spec("pass"))
        assert not run.started
        assert isinstance(outcomes.of_run(run, jail.limits), PlatformFault)


def test_a_daemon_dies_with_the_jail(render: Any) -> None:
    ran = render(
        """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '300'])
    os._exit(0)
""",
    )
    assert ran.run.ok, ran.run.log
    assert _live_processes(_jail_uid()) == []


def test_absurd_settings_from_inside_the_scene_are_overridden(render: Any) -> None:
    ran = render(
        "pass",
        header=(
            "from manim import config\nconfig.pixel_width = 20000\nconfig.pixel_height = 20000\n"
            "config.frame_rate = 5000\n"
        ),
    )
    assert ran.run.ok, ran.run.log
    video = ran.jail.copy_out("video.mp4", 10**8, "chunk video")
    info = media.probe(video, SETTINGS)
    assert (info["width"], info["height"], info["fps"]) == (WIDTH, HEIGHT, FPS)


# --- outputs: only the farm's names, never a link ----------------------------------------------

SWAP = """
import atexit, shutil
def _swap():
{body}
atexit.register(_swap)
"""


def _swap(body: str) -> str:
    return SWAP.format(body="\n".join("    " + line for line in body.strip().splitlines()))


@pytest.mark.parametrize(
    ("name", "swap"),
    [
        # a symlinked directory component: out -> /, so out/etc/shadow would be the host's
        ("video.mp4", "shutil.rmtree('/work/out')\nos.symlink('/', '/work/out')"),
        ("captions.srt", "shutil.rmtree('/work/out')\nos.symlink('/etc', '/work/out')"),
        (
            "video.mp4",
            "os.remove('/work/out/video.mp4')\nos.symlink('/etc/passwd', '/work/out/video.mp4')",
        ),
        ("video.mp4", "os.remove('/work/out/video.mp4')\nos.mkfifo('/work/out/video.mp4')"),
        ("video.mp4", "os.remove('/work/out/video.mp4')\nos.mkdir('/work/out/video.mp4')"),
    ],
)
def test_links_fifos_and_directories_are_refused_not_followed(
    render: Any, name: str, swap: str
) -> None:
    # The scene swaps its outputs after the runner wrote them (atexit runs last).
    ran = render("self.add_subcaption('hi', duration=0.1)", header=_swap(swap))
    assert ran.run.ok, ran.run.log
    with pytest.raises(outputs.OutputError) as info:
        ran.jail.copy_out(name, 10**8, "chunk video") or pytest.fail("nothing there")
    assert "root:" not in str(info.value)  # the farm's words, no host bytes


def test_output_names_cannot_escape() -> None:
    with outputs.directory(Path("/tmp")) as fd:
        for bad in ("/etc/passwd", "../etc/passwd", "out/../../etc/passwd", "", "out//x"):
            with pytest.raises(outputs.OutputError, match="bad output name"):
                outputs.read_output(fd, bad, 10)


def test_a_symlinked_component_is_refused_by_the_walk_too(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with outputs.directory(tmp_path) as fd:
        assert outputs.read_output(fd, "real/f", 10) == b"x"
        with pytest.raises(OSError):
            os.close(outputs._walk(fd, "link/f", os.O_RDONLY))
        with pytest.raises(OSError):
            os.close(outputs._openat2(fd, "link/f", os.O_RDONLY))


def test_rewritten_result_file_names_no_path_and_is_bounded(render: Any) -> None:
    header = """
import atexit, json
def _forge():
    with open('/work/result.json', 'w') as f:
        json.dump({'ok': True, 'frames': 2, 'animations': 1, 'video': '/etc/shadow',
                   'captions': '/root/.ssh/id_rsa'}, f)
atexit.register(_forge)
"""
    ran = render("pass", header=header)
    with pytest.raises(outputs.OutputError):
        outputs.parse_render(ran.run.report, 100)


@pytest.mark.parametrize(
    "report",
    [
        b'{"ok": true, "durations": [NaN]}',
        b'{"ok": true, "durations": [Infinity]}',
        b'{"ok": true, "durations": [-1.0]}',
        b'{"ok": true, "durations": [1e308]}',
        b'{"ok": true, "durations": ["1"]}',
        b'{"ok": true, "durations": [true]}',
        b'{"ok": true, "durations": 5}',
        b'{"ok": true, "durations": [0.1], "video": "/etc/passwd"}',
    ],
)
def test_forged_plans_are_refused(report: bytes) -> None:
    with pytest.raises(outputs.OutputError):
        outputs.parse_plan(outputs.load_report(report), 600.0)


def test_render_report_frames_within_the_plan() -> None:
    forged = {"ok": True, "frames": 10**6, "animations": 1, "video": True, "captions": False}
    with pytest.raises(outputs.OutputError, match="rendered 1000000 frames where its plan had 100"):
        outputs.parse_render(forged, 100)


# --- scene-made media is read only in a jail, and only plain MP4 passes --------------------------

CHUNK_FAKES = {
    "hls": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n",
    "dash": (
        b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" '
        b'minimumUpdatePeriod="PT0S"><Period><AdaptationSet><Representation id="1" '
        b'bandwidth="1"><BaseURL>file:///etc/hostname</BaseURL></Representation>'
        b"</AdaptationSet></Period></MPD>"
    ),
    "concat": b"ffconcat version 1.0\nfile '/etc/hostname'\n",
    "text": b"just some text\n" * 100,
}


def _real_chunk(tmp_path: Path, pool: JailPool, fps: int = FPS) -> Path:
    with pool.take() as jail:
        run = jail.run("render", _spec("pass", fps=fps))
        assert run.ok, run.log
        video = jail.copy_out("video.mp4", 10**8, "chunk video")
        assert video is not None
        dest = tmp_path / f"real-{fps}.mp4"
        dest.write_bytes(video.read_bytes())
    return dest


def _check(video: Path, **expect: Any) -> media.VideoInfo:
    geometry = {"width": WIDTH, "height": HEIGHT, "fps": FPS, "max_frames": 100, **expect}
    return media.check_chunk(SETTINGS, video, None, **geometry)[0]


@pytest.mark.parametrize("kind", sorted(CHUNK_FAKES))
def test_a_playlist_or_text_posing_as_a_chunk_is_refused(tmp_path: Path, kind: str) -> None:
    fake = tmp_path / "chunk.mp4"
    fake.write_bytes(CHUNK_FAKES[kind])
    started = time.monotonic()
    with pytest.raises(media.MediaError) as info:
        _check(fake)
    assert str(info.value) == "the chunk video is not a plain MP4 video"
    assert time.monotonic() - started < 30  # a manifest once made ffprobe spin for 101 s


def test_truncated_wrong_size_and_wrong_fps_chunks_are_refused(
    tmp_path: Path, pool: JailPool
) -> None:
    real = _real_chunk(tmp_path, pool)
    assert _check(real).frames == 2
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size * 2 // 3])
    refused = r"^the chunk video (is not a plain MP4|is truncated|has streams)"
    with pytest.raises(media.MediaError, match=refused):
        _check(truncated)
    with pytest.raises(media.MediaError, match="is 320x180 at 10 fps; the job is 640x360"):
        _check(real, width=640, height=360)
    with pytest.raises(media.MediaError, match="at 10 fps; the job is 320x180 at 15 fps"):
        _check(real, fps=15)
    with pytest.raises(media.MediaError, match="rendered 2 frames where its plan had 1"):
        _check(real, max_frames=1)


def test_captions_are_parsed_in_the_jail_and_never_quoted(tmp_path: Path, pool: JailPool) -> None:
    real = _real_chunk(tmp_path, pool)
    secret = "root-only-" + os.urandom(6).hex()
    srt = tmp_path / "chunk.srt"
    srt.write_text(f"1\n00:00:00,000 --> {secret}\nhello\n")
    with pytest.raises(media.MediaError) as info:
        media.check_chunk(SETTINGS, real, srt, width=WIDTH, height=HEIGHT, fps=FPS, max_frames=100)
    assert secret not in str(info.value)
    srt.write_text("1\n00:00:00,000 --> 00:00:00,100\nhello\n")
    _, cues = media.check_chunk(
        SETTINGS, real, srt, width=WIDTH, height=HEIGHT, fps=FPS, max_frames=100
    )
    assert [(c.start_ms, c.end_ms, c.text) for c in cues] == [(0, 100, "hello")]


# --- jail scratch -------------------------------------------------------------------------------


def test_jail_scratch_is_removed_when_it_ends_crash_included(pool: JailPool) -> None:
    jail = Jail(SETTINGS, pool.limits, warm=True)
    cgroups = list(jail.cgroup.dirs) if jail.cgroup else []
    assert jail.dir.is_dir()
    os.killpg(jail.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    run = jail.run("render", _spec("pass"))
    assert not run.ok
    jail.close()
    assert not jail.dir.exists()
    assert not any(d.exists() for d in cgroups)


def test_stale_jails_of_a_dead_worker_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"farm-jail-{dead.pid}-abc"
    (stale / "scratch").mkdir(parents=True)
    (stale / "scratch" / "code.py").write_text("someone else's scene")
    live = tmp_path / f"farm-jail-{os.getpid()}-def"
    live.mkdir()
    foreign = tmp_path / "farm-jail-notours"
    foreign.mkdir()
    assert sweep_stale(tmp_path) == 1
    assert not stale.exists() and live.exists() and foreign.exists()


def test_limits_follow_the_settings() -> None:
    limits = Limits.from_settings(SETTINGS)
    assert limits.memory_bytes == 512 * 2**20 and limits.processes == 48
    assert limits.tmpfs_bytes == 32 * 2**20 and limits.scratch_bytes == 192 * 2**20
    assert not Limits.from_settings(SETTINGS, renderer="opengl").address_space


def test_gpu_jails_bind_every_gpu_device_and_can_run_without_a_procfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.jail import bwrap

    # A pod given GPUs 0 and 3 (MIG capabilities, UVM, render node): all of them are bound.
    dev = tmp_path / "dev"
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).parent.mkdir(exist_ok=True)
        (dev / name).touch()
    (dev / "nvidia-caps").mkdir()
    patterns = tuple(p.replace("/dev/", f"{dev}/") for p in bwrap.GPU_DEVICE_PATTERNS)
    monkeypatch.setattr(bwrap, "GPU_DEVICE_PATTERNS", patterns)
    expected = {str(dev / n) for n in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm")}
    expected |= {str(dev / "nvidia-uvm-tools"), str(dev / "nvidia-caps")}
    assert set(bwrap.gpu_devices()) == expected
    limits = Limits.from_settings(SETTINGS)
    fresh = bwrap.command("runner", "serve", tmp_path, limits, jailed=True, gpu=True)
    assert fresh[fresh.index("--proc") + 1] == "/proc"
    bare = bwrap.command("runner", "serve", tmp_path, limits, jailed=True, gpu=True, proc="none")
    assert "--proc" not in bare
    assert bare[bare.index("--dir") + 1] == "/proc"
    assert bare[bare.index("--ro-bind-try") : bare.index("--ro-bind-try") + 3] == [
        "--ro-bind-try",
        "/proc/driver/nvidia",
        "/proc/driver/nvidia",
    ]
    # Every device node the host (pod) has, not only /dev/nvidia0
    binds = {fresh[i + 1] for i, word in enumerate(fresh) if word == "--dev-bind-try"}
    assert binds == expected
    media_jail = bwrap.command("media", "probe", tmp_path, limits, jailed=True, gpu=False)
    assert "--dev-bind-try" not in media_jail


def test_a_deferred_warm_up_starts_when_it_may_and_a_step_that_comes_first_calls_it_off() -> None:
    # A helper beside its plan warms its next jail once the plan's pass has ended.
    pool = JailPool(SETTINGS)
    try:
        may = threading.Event()
        pool.start_when(may.is_set, within=60)
        time.sleep(0.5)
        assert not pool.waiting
        may.set()
        deadline = time.monotonic() + 10
        while not pool.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.waiting
    finally:
        pool.close()
    pool = JailPool(SETTINGS)
    try:
        pool.start_when(lambda: False, within=0.3)
        with pool.take(warm_next=lambda: False):
            pass
        time.sleep(0.8)  # past its deadline: it was called off, not merely late
        assert not pool.waiting
    finally:
        pool.close()


def test_a_claiming_pass_encodes_as_many_movies_at_once_as_its_worker_answers(
    pool: JailPool,
) -> None:
    # The passes of a job on one node share its CPUs: each claim's answer says how many movies
    # the pass may encode at once from then on (workers/jail/handoff.py). Here the answer is
    # the settings' floor, 200 wherever this runs; the pass started with 1.
    settings = SETTINGS.with_(max_inflight_encoders=200)
    writer = "self.renderer.file_writer.settings.max_inflight_encoders"
    spec = _spec(
        f"print('before', {writer})\n"
        "self.play(FadeIn(Circle()), run_time=0.2)\n"
        f"print('after', {writer})",
        max_inflight_encoders=1,
        claim_plays=True,
        render_budget_seconds=10.0**9,
        range_media=False,
    )
    claimed: list[int] = []
    with Jail(settings, pool.limits, warm=True) as jail:
        run = jail.run("plan", spec, on_claim=lambda play: claimed.append(play) or "draw")
    assert run.ok, run.log
    assert claimed == [0, 1]
    assert "before 1" in run.log and "after 200" in run.log


def test_a_helper_pass_leaves_static_waits_to_its_plan(pool: JailPool) -> None:
    # A static wait is one frame drawn and repeated: the plan draws it for little, where a
    # helper's movie of it costs the job a movie to store, wait for and join (helpers.py).
    code = (
        "self.play(FadeIn(Circle()), run_time=0.2)\n"
        "self.wait(0.2)\n"
        "square = Square()\n"
        "square.add_updater(lambda m, dt: m.rotate(dt))\n"
        "self.add(square)\n"
        "self.wait(0.2)"  # not static: an updater moves the square every frame
    )

    def claimed(leaves: bool) -> list[int]:
        spec = _spec(
            code,
            claim_plays=True,
            render_budget_seconds=10.0**9,
            range_media=False,
            leave_static_waits=leaves,
        )
        claims: list[int] = []
        with Jail(SETTINGS, pool.limits, warm=True) as jail:
            run = jail.run("plan", spec, on_claim=lambda play: claims.append(play) or "draw")
        assert run.ok, run.log
        return claims

    # A plan claims every play it reaches (the scene ends with a Create); a helper asks for
    # every one but the static wait
    assert claimed(leaves=False) == [0, 1, 2, 3]
    assert claimed(leaves=True) == [0, 2, 3]


def test_a_jail_without_procfs_still_renders(pool: JailPool) -> None:
    settings = SETTINGS.with_(jail_proc="none")
    with Jail(settings, pool.limits, warm=True) as jail:
        run = jail.run("render", _spec("print('proc', sorted(os.listdir('/proc')))"))
    assert run.ok, run.log
    assert "proc []" in run.log


def test_opengl_jails_have_no_address_space_limit(pool: JailPool) -> None:
    # EGL reserves address space in bulk: memory is held by the cgroup (or the pod's), not by
    # RLIMIT_AS, for OpenGL renders.
    limits = Limits.from_settings(SETTINGS, renderer="opengl")
    assert not limits.address_space
    with Jail(SETTINGS, limits, warm=True) as jail:
        run = jail.run(
            "render",
            _spec("print([l for l in open('/proc/self/limits') if 'address space' in l])"),
        )
    assert run.ok, run.log
    assert "Max address space         unlimited" in run.log


def test_scene_code_runs_below_the_workers_priority(pool: JailPool) -> None:
    # The worker's heartbeats (and an API on the same node) must win the CPU from scene code.
    assert pool.limits.niceness == SETTINGS.jail_nice > 0
    with pool.take() as jail:
        run = jail.run("render", _spec("print('nice', os.getpriority(os.PRIO_PROCESS, 0))"))
    assert run.ok, run.log
    assert f"nice {SETTINGS.jail_nice}" in run.log
    assert os.getpriority(os.PRIO_PROCESS, 0) < SETTINGS.jail_nice  # the worker itself is not


def test_a_plan_or_chunk_running_is_marked_on_its_host(pool: JailPool, tmp_path: Path) -> None:
    # Given a render jail running a scene (watched from another thread while it sleeps)
    marks: list[bool] = []
    with pool.take() as jail:
        thread = threading.Thread(
            target=lambda: marks.append(jail.run("render", _spec("time.sleep(1.5)")).ok)
        )
        thread.start()
        while thread.is_alive():
            marks.append((jail.host / RUNNING).is_file())
            time.sleep(0.1)
        thread.join()
        assert marks.pop() is True  # the run itself went well
        # Then its host-only side said so while it ran, where the scene cannot reach
        assert any(marks)
        assert not (jail.host / RUNNING).exists()  # and only while it ran
    # And the mark went with the jail's files
    assert not jail.dir.exists()
    # And a plan counts the marks of every worker's jails on the host, nothing else
    for name in ("farm-jail-1-a", "farm-jail-2-b", "farm-jail-3-c"):
        (tmp_path / name / "host").mkdir(parents=True)
    (tmp_path / "farm-jail-1-a" / "host" / RUNNING).touch()
    (tmp_path / "farm-jail-2-b" / "host" / RUNNING).touch()
    (tmp_path / "other" / "host").mkdir(parents=True)
    (tmp_path / "other" / "host" / RUNNING).touch()
    assert running_render_jails(tmp_path) == 2

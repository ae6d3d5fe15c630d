"""`make bench`: the farm against plain manim, one run, interleaved rounds, medians, ratios.

Contestants (issue 14's table), each timed submit-to-completed (farm) or command start to exit
(plain `manim`), the farm's `high` 1920x1080@30 unless said:

  full      ops/bench/scene.py rendered whole: plain manim on the machine's cores vs the farm
            (one worker, one render slot per core);
  nodes     plain manim pinned to one core (`taskset -c 0`) vs the farm as one-core nodes
            (one worker process per core, each pinned to its core with one render slot);
  edit      the scene with only its last animation changed, rendered again after the original:
            plain manim with its own cache vs the farm (its animation cache), and vs the farm's
            own full render;
  hello     HelloKodisc at `medium` (1280x720@30): the `manim` command vs the farm;
  again     the identical job submitted again (the result cache).

Rounds interleave every contestant so a slow spell of this shared machine hits all of them.
Also prints CPU seconds (plain manim's against the farm's worker processes, start-up and idle
included) and the projected wall time on 4, 8 and 16 nodes (see docs/benchmark.md). Writes
bench-results/latest.json. Uses its own database, Redis database and bucket.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from farm import db, keys  # noqa: E402
from farm.config import Settings, load_settings  # noqa: E402
from farm.storage import S3Storage  # noqa: E402

SCENE = ROOT / "ops" / "bench" / "scene.py"
CLASS = "Benchmark"
HELLO = ROOT / "ops" / "bench" / "hello_kodisc.py"
BIN = Path(sys.prefix) / "bin"
CORES = os.cpu_count() or 1
GEOMETRY = {"high": (1920, 1080, 30), "medium": (1280, 720, 30)}
# The last animation of the benchmark scene, and its edit.
LAST = "self.play(FadeOut(grid), FadeOut(title), FadeOut(needle), run_time=0.8)"
EDITED = "self.play(FadeOut(grid), FadeOut(title), FadeOut(needle), run_time=0.9)"


def _settings() -> Settings:
    # The farm's defaults, but for the FARM_* settings given to the bench itself (to compare
    # a setting on and off: FARM_PLAN_HELPERS=false make bench).
    base = load_settings({k: v for k, v in os.environ.items() if k.startswith("FARM_")})
    return base.with_(
        database_url=psycopg.conninfo.make_conninfo(base.database_url, dbname="farm_bench"),
        redis_url="redis://127.0.0.1:6379/9",
        s3_bucket="farm-bench",
        worker_metrics_port=9191,
        scheduler_metrics_port=9192,
        log_format="text",
        rate_limit_per_second=1000.0,
        rate_limit_burst=1000,
    )


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "PROMETHEUS_"))}
    for name, value in vars(settings).items():
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        env[f"FARM_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuAccount:
    """CPU seconds of a process tree, jails included: a cgroup v1 ``cpuacct`` group that the
    farm's processes join before they exec (their children, bwrap and every jail, inherit it;
    the jail's own cgroups are memory and pids only). None where cpuacct is not available:
    then only waited-for children count (``_cpu_children``), which misses the jails."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.path: Path | None = self.ROOT / f"farm-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None
        self.rusage_before = _cpu_children()

    def join(self) -> None:
        """preexec_fn of a farm process: join the group before exec."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float:
        if self.path is None:
            return _cpu_children() - self.rusage_before
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is not None:
            for _ in range(50):  # the last jails may take a moment to leave
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


# --- plain manim ---------------------------------------------------------------------------


def plain_manim(
    scene: Path, cls: str, quality: str, *, pin: str | None = None, media: Path | None = None
) -> dict[str, float]:
    """Wall and CPU seconds of one `manim render` (a fresh process). With ``media``, manim's own
    cache is on and kept there (for the edit round); without, caching is off."""
    width, height, fps = GEOMETRY[quality]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(BIN / "manim"), "render", str(scene), cls, "-r", f"{width},{height}"]
        cmd += ["--fps", str(fps), "--progress_bar", "none", "-v", "WARNING"]
        cmd += ["--media_dir", str(media or tmp)]
        if media is None:
            cmd.append("--disable_caching")
        if pin is not None:
            cmd = ["taskset", "-c", pin, *cmd]
        cpu = _cpu_children()
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp)
        wall = time.perf_counter() - started
    return {"wall": wall, "cpu": _cpu_children() - cpu}


# --- the farm ------------------------------------------------------------------------------


class Farm:
    """Worker processes (optionally pinned, one per CPU set) and the API, for one contestant."""

    def __init__(self, settings: Settings, pins: list[str | None], concurrency: int) -> None:
        from api.app import create_app

        self.settings = settings
        self.client = create_app(settings).test_client()
        self.pool = db.open_pool(settings, max_size=2)
        with self.pool.connection() as conn:
            key = keys.create_key(conn, f"bench-{uuid.uuid4().hex[:6]}", 10**7).key
        self.headers = {"Authorization": f"Bearer {key}"}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.cpu = CpuAccount()
        logs = ROOT / "bench-results"
        commands = []
        for pin in pins:
            cmd = [str(BIN / "farm"), "worker", "--queues", "render.high,render.medium,stitch"]
            cmd += ["--concurrency", str(concurrency)]
            commands.append(cmd if pin is None else ["taskset", "-c", pin, *cmd])
        # The scheduler's dispatcher publishes every plan and chunk (the outbox).
        commands.append([str(BIN / "farm"), "scheduler"])
        for i, cmd in enumerate(commands):
            # Each worker process serves its metrics on a port of its own (a second one on the
            # same port would exit at start, leaving one node).
            port = settings.worker_metrics_port + 10 * i
            self.workers.append(
                subprocess.Popen(
                    cmd,
                    env={**_env(settings), "FARM_WORKER_METRICS_PORT": str(port)},
                    stdout=(
                        logs / f"{cmd[-1] if cmd[-1] == 'scheduler' else 'worker'}-{i}.log"
                    ).open("a"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=self.cpu.join,
                )
            )
        time.sleep(5)  # up and idle, warm jails started, as a farm is

    def render(self, code: str, cls: str, quality: str) -> dict[str, Any]:
        started = time.perf_counter()
        response = self.client.post(
            "/api/v2/render",
            headers=self.headers,
            json={"code": code, "className": cls, "quality": quality},
        )
        job_id = response.get_json()["jobId"]
        # The job's row, which the API reads, is watched every 20 ms: an API poll costs 1.5 ms
        # of CPU, and 50 a second took 0.6 s of CPU from the farm's 2 cores in an 8 s job.
        with self.pool.connection() as conn:
            while True:
                row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                if row is not None and row["status"] in ("completed", "failed"):
                    break
                time.sleep(0.02)
        wall = time.perf_counter() - started
        job = self.client.get(f"/api/v2/render/{job_id}", headers=self.headers).get_json()
        if job["status"] != "completed":
            raise SystemExit(f"farm job failed: {job['error']}")
        return {"wall": wall, **self._steps(job_id)}

    def _steps(self, job_id: str) -> dict[str, Any]:
        with self.pool.connection() as conn:
            steps = conn.execute(
                "SELECT kind, idx, attempt, published_at, started_at, finished_at FROM steps"
                " WHERE job_id = %s",
                (job_id,),
            ).fetchall()
            row = conn.execute("SELECT plays FROM jobs WHERE id = %s", (job_id,)).fetchone()
        plays = (row["plays"] if row else None) or []
        done = [s for s in steps if s["finished_at"] and s["started_at"]]
        plan = [s for s in done if s["kind"] == "plan" and s["idx"] == 0]
        helpers = [s for s in done if s["kind"] == "plan" and s["idx"] > 0]
        chunks = [s for s in done if s["kind"] == "chunk"]
        stitch = [s for s in done if s["kind"] == "stitch"]

        def seconds(s: dict[str, Any]) -> float:
            return float((s["finished_at"] - s["started_at"]).total_seconds())

        return {
            "plan": seconds(plan[0]) if plan else 0.0,
            # Each helper pass: its seconds and the animations it drew (one helper: all of
            # them; the plays record does not say which helper drew which).
            "helpers": [
                (seconds(h), [i for i, p in enumerate(plays) if p.get("helper")]) for h in helpers
            ][:1],
            # From a helper's publication (the plan asked for it) to its start.
            "helper_gaps": [
                float((h["started_at"] - h["published_at"]).total_seconds())
                for h in helpers
                if h["published_at"]
            ],
            "chunks": sorted(seconds(c) for c in chunks),
            "stitch": seconds(stitch[0]) if stitch else 0.0,
            # Drawn by the plan's own pass: joined by key, or (after a hand-off) into chunk 0's
            # video.
            "drawn_by_plan": [i for i, p in enumerate(plays) if p.get("plan") or p.get("early")],
            "drawn_by_helpers": [i for i, p in enumerate(plays) if p.get("helper")],
        }

    def close(self) -> float:
        """Stop the farm's processes; their CPU seconds (jails included) while they ran."""
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in self.workers:
            worker.wait(timeout=60)
        self.pool.close()
        seconds = self.cpu.seconds()
        self.cpu.close()
        return seconds


def unique(code: str) -> str:
    """The same scene under a new result-cache key (comments never reach a play's hash)."""
    return code + f"\n# bench run {uuid.uuid4()}\n"


# --- rounds --------------------------------------------------------------------------------


def one_round(settings: Settings) -> dict[str, dict[str, Any]]:
    code = SCENE.read_text()
    assert LAST in code
    edited = code.replace(LAST, EDITED)
    hello = HELLO.read_text()
    out: dict[str, dict[str, Any]] = {}
    out["plain_full"] = plain_manim(SCENE, CLASS, "high")
    out["plain_one_core"] = plain_manim(SCENE, CLASS, "high", pin="0")
    with tempfile.TemporaryDirectory() as media_name:
        media = Path(media_name)
        plain_manim(SCENE, CLASS, "high", media=media)  # warms manim's own cache
        # Same module name as the original (manim keys its cache directory by it).
        (media / "edit").mkdir()
        edited_scene = media / "edit" / SCENE.name
        edited_scene.write_text(edited)
        out["plain_edit"] = plain_manim(edited_scene, CLASS, "high", media=media)
    out["plain_hello"] = plain_manim(HELLO, "HelloKodisc", "medium")

    farm = Farm(settings, [None], concurrency=CORES)
    try:
        # A fresh owner per round: its animation cache starts cold.
        out["farm_full"] = farm.render(unique(code), CLASS, "high")
        out["farm_edit"] = farm.render(unique(edited), CLASS, "high")
        hello_code = unique(hello)
        out["farm_hello"] = farm.render(hello_code, "HelloKodisc", "medium")
        out["farm_again"] = farm.render(hello_code, "HelloKodisc", "medium")
    finally:
        cpu = farm.close()
    out["farm_full"]["cpu_all_jobs"] = cpu
    nodes = Farm(settings, [str(c) for c in range(CORES)], concurrency=1)
    try:
        out["farm_nodes"] = nodes.render(unique(code), CLASS, "high")
    finally:
        out["farm_nodes"]["cpu"] = nodes.close()
    return out


def median_of(rounds: list[dict[str, dict[str, Any]]], name: str, field: str = "wall") -> float:
    return float(statistics.median(r[name][field] for r in rounds))


# --- projection ----------------------------------------------------------------------------


def dry_plan(code: str) -> tuple[list[float], float]:
    """Each animation's seconds in the video, and the seconds the farm's runner takes to
    simulate the whole scene drawing nothing (in this process, imports done: the skip cost)."""
    from workers.jail.program.runner import RenderSpec, plan_scene

    with tempfile.TemporaryDirectory() as tmp:
        spec = RenderSpec(code, CLASS, 1920, 1080, 30, portrait=False, out_dir=tmp)
        plan_scene(spec)  # imports, LaTeX and font caches
        started = time.perf_counter()
        durations = plan_scene(spec)
        return durations, time.perf_counter() - started


def draw_costs(code: str) -> list[float]:
    """Each animation's seconds to draw and encode on one core: the farm's runner renders the
    scene in this process, pinned to CPU 0, with one encoder (so each animation's encoding
    ends within its own play)."""
    from manim.scene.scene import Scene

    from workers.jail.program.runner import RenderSpec, render_scene

    costs: list[float] = []
    play = Scene.play

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        play(self, *args, **kwargs)
        costs.append(time.perf_counter() - started)

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    Scene.play = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = RenderSpec(
                code, CLASS, 1920, 1080, 30, portrait=False, out_dir=tmp, max_inflight_encoders=1
            )
            render_scene(spec)
    finally:
        Scene.play = play  # type: ignore[method-assign]
        os.sched_setaffinity(0, affinity)
    return costs


def project(
    draw: list[float],
    skip: list[float],
    *,
    nodes: int,
    start_up: float,
    helper_gap: float,
    stitch: float,
) -> tuple[float, list[int]]:
    """Projected wall seconds on ``nodes`` one-core nodes, and the animations each pass draws,
    from each animation's seconds to draw (``draw``) and to simulate (``skip``): the plan and
    a helper pass per other node, which the plan of a new scene asks for as its pass starts
    and which starts ``helper_gap`` seconds later (its queue hop); every pass (``start_up``
    seconds of its own first) reaches the animations in order and draws those nobody reached
    first, simulating the others (workers/steps/helpers.py); then the stitch."""
    clock = [start_up] + [helper_gap + start_up] * (nodes - 1)  # when each reaches its next
    drew = [0] * nodes
    for index in range(len(draw)):
        first = min(range(nodes), key=lambda k: clock[k])
        for k in range(nodes):
            clock[k] += draw[index] if k == first else skip[index]
        drew[first] += 1
    return max(clock) + stitch, drew


# --- main ----------------------------------------------------------------------------------


def _row(label: str, plain: float | None, farm: float, ratio_of: float | None = None) -> str:
    left = f"{plain:7.2f} s" if plain is not None else " " * 9
    ratio = f"{farm / ratio_of:6.2f}" if ratio_of else " " * 6
    return f"| {label:<64} | {left} | {farm:7.2f} s | {ratio} |"


def main() -> int:
    # Stopped from outside: unwind, so the worker processes the bench started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = _settings()
    repeats = int(os.environ.get("FARM_BENCH_REPEATS", "3"))
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    db.ensure_database(settings.database_url)
    db.migrate(settings.database_url)
    S3Storage(settings).ensure_bucket()
    redis.Redis.from_url(settings.redis_url).flushdb()
    if shutil.which("ffmpeg") is None or shutil.which("taskset") is None:
        raise SystemExit("ffmpeg and taskset are needed: run `make system`")
    print(
        f"benchmark: {SCENE.name} ({CLASS}) at high (1920x1080@30), {CORES} cores, "
        f"median of {repeats} interleaved rounds",
        flush=True,
    )
    rounds = []
    for r in range(repeats):
        rounds.append(one_round(settings))
        print(
            f"  round {r + 1}: " + ", ".join(f"{k} {v['wall']:.2f}" for k, v in rounds[-1].items()),
            flush=True,
        )
    m: Callable[..., float] = lambda name, field="wall": median_of(rounds, name, field)  # noqa: E731
    farm_full, farm_edit = m("farm_full"), m("farm_edit")
    print()
    print(f"| {'':<64} | plain     | farm      | ratio  |")
    print(f"|{'-' * 66}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    print(_row(f"full render, same {CORES} cores", m("plain_full"), farm_full, m("plain_full")))
    print(
        _row(
            f"plain on one core (taskset) vs the farm as {CORES} one-core nodes",
            m("plain_one_core"),
            m("farm_nodes"),
            m("plain_one_core"),
        )
    )
    print(
        _row(
            "edit the last animation, render again (plain: manim's own cache)",
            m("plain_edit"),
            farm_edit,
            m("plain_edit"),
        )
    )
    print(_row("  the same edit against the farm's own full render", None, farm_edit, farm_full))
    print(
        _row(
            "HelloKodisc at medium, submit to completed vs the manim command",
            m("plain_hello"),
            m("farm_hello"),
            m("plain_hello"),
        )
    )
    print(_row("identical job again (result cache)", None, m("farm_again")))
    print()
    plain_cpu, farm_cpu = m("plain_full", "cpu"), m("farm_nodes", "cpu")
    print(
        f"CPU seconds, full render: plain manim {plain_cpu:.1f} s; the farm's worker processes "
        f"(one-core nodes run, start-up and idle included) {farm_cpu:.1f} s "
        f"({farm_cpu / plain_cpu:.2f}x)"
    )
    steps = sorted(rounds, key=lambda r: r["farm_nodes"]["wall"])[len(rounds) // 2]["farm_nodes"]
    helper = steps["helpers"][0] if steps["helpers"] else (0.0, [])
    print(
        f"farm passes (median one-core-nodes round): plan {steps['plan']:.2f} s, helper pass "
        f"{helper[0]:.2f} s, chunks "
        + (", ".join(f"{c:.2f}" for c in steps["chunks"]) or "none")
        + f", stitch {steps['stitch']:.2f} s"
    )

    # Projection: each animation's costs, measured in this run.
    durations, dry_seconds = dry_plan(SCENE.read_text())
    frames = sum(round(d * 30) for d in durations)
    skip_per_frame = dry_seconds / frames  # simulating a frame, drawing nothing
    skip = [skip_per_frame * round(d * 30) for d in durations]
    draw = draw_costs(SCENE.read_text())
    if len(draw) != len(durations):
        raise SystemExit(f"timed {len(draw)} animations of the {len(durations)} planned")
    drawn_by_plan, drawn_by_helpers = steps["drawn_by_plan"], steps["drawn_by_helpers"]
    print(
        f"the plan drew {len(drawn_by_plan)} of {len(durations)} animations, helper passes "
        f"{len(drawn_by_helpers)}, chunks the rest"
    )
    # A pass's fixed cost: what its measured time leaves after simulating and drawing (the
    # plan's includes its wait for the helpers, so the helpers' own is taken where there is one).
    fixed = []
    for seconds, drew in [(steps["plan"], drawn_by_plan), *steps["helpers"]]:
        fixed.append(
            seconds
            - sum(draw[i] for i in drew)
            - sum(skip[i] for i in range(len(draw)) if i not in drew)
        )
    start_up = max(0.0, min(fixed[1:] or fixed))
    projections = {}
    for nodes in (1, 2, 4, 8, 16):
        seconds, drew = project(
            draw,
            skip,
            nodes=nodes,
            start_up=start_up,
            helper_gap=min(steps["helper_gaps"] or [0.0]),
            stitch=steps["stitch"],
        )
        projections[nodes] = {"seconds": seconds, "animations_per_pass": drew}
    print(
        "projected wall time on N one-core nodes (the plan and N-1 helper passes claiming the "
        "animations as they reach them, then the stitch): "
        + ", ".join(f"{n}: {p['seconds']:.2f} s" for n, p in projections.items())
    )
    results = {
        "cores": CORES,
        "repeats": repeats,
        "rounds": rounds,
        "medians": {name: m(name) for name in rounds[0]},
        "projection": projections,
        "per_animation": {"draw": draw, "skip": skip},
        "pass_fixed_seconds": fixed,
        "drawn_by_plan": drawn_by_plan,
        "drawn_by_helpers": drawn_by_helpers,
        "pass_start_up": start_up,
    }
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"written {out_dir / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A plan that renders while it plans (``plan_render_seconds``), and the helper passes that draw
beside it on free render slots, through the whole farm.

The session's worker plans without drawing (conftest), so every other test reaches the chunk
path; this module swaps it for one at the production default, as ``test_opengl`` swaps in its
OpenGL pool, and checks what the issue asks: a short scene is finished by its plan pass, an
edit of a cached scene draws only the edited animation and in the plan, and a plan whose budget
runs out hands the rest to chunks. Every video is compared frame by frame with plain manim's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from farm import anim_cache
from farm.config import Settings
from farm.play_claims import PlayClaims
from tests import scenes
from tests.conftest import ALL_QUEUES, Key, Process, submit, unique, wait_for
from tests.support import download, wait_until_answers
from workers.jail.outputs import OutputError, parse_plan_full

pytestmark = pytest.mark.slow

CHAIN = (Path(__file__).parent / "corpus" / "c13_transform_chain.py").read_text()

# Four plays and a subcaption: what a plan that draws some of them must keep.
FOUR = """
from manim import *

class Four(Scene):
    def construct(self):
        s = Square()
        self.play(Create(s), run_time=0.4)
        self.add_subcaption("turning", duration=0.5)
        self.play(Rotate(s, PI / 3), run_time=0.4)
        self.play(s.animate.shift(LEFT), run_time=0.4)
        self.wait(0.2)
"""


@contextmanager
def _worker_with(
    worker: Process,
    settings: Settings,
    farm_env: dict[str, str],
    log: Path,
    queues: str = ALL_QUEUES,
    **env: str,
) -> Iterator[Process]:
    """The session's worker swapped for one with these FARM_* values (and queues), then
    swapped back. Its plans draw alone unless ``FARM_PLAN_HELPERS`` says otherwise: these
    tests are of the plan's own pass (as on a node with one render slot)."""
    worker.stop()
    env = {"FARM_PLAN_HELPERS": "false", **env}
    swapped = Process(
        ["worker", "--queues", queues, "--concurrency", "2"], {**farm_env, **env}, log
    ).start()
    try:
        wait_until_answers(
            f"http://127.0.0.1:{settings.worker_metrics_port}/metrics",
            lambda: swapped.proc is not None and swapped.proc.poll() is None,
            f"the swapped worker (see {log})",
        )
        yield swapped
    finally:
        swapped.stop()
        worker.start()


@pytest.fixture(scope="module")
def default_worker(
    worker: Process, settings: Settings, farm_env: dict[str, str], artifacts: Path
) -> Iterator[Process]:
    """A worker whose plans render at the production default (``Settings.plan_render_seconds``),
    with helper passes (the default too)."""
    default = str(Settings.plan_render_seconds)
    log = artifacts / "plan-render-worker.log"
    env = {"FARM_PLAN_RENDER_SECONDS": default, **HELPERS}
    with _worker_with(worker, settings, farm_env, log, **env) as w:
        yield w


BudgetWorker = Callable[..., AbstractContextManager[Process]]
HELPERS = {"FARM_PLAN_HELPERS": "true"}


@pytest.fixture()
def budget_worker(
    default_worker: Process, settings: Settings, farm_env: dict[str, str], artifacts: Path
) -> BudgetWorker:
    """``budget_worker(name, seconds, queues=ALL_QUEUES, **env)``: the default worker swapped,
    for a block, for one whose plans draw for ``seconds`` (its log in
    test-artifacts/<name>.log)."""

    def swap(
        name: str, seconds: str, queues: str = ALL_QUEUES, **env: str
    ) -> AbstractContextManager[Process]:
        log = artifacts / f"{name}.log"
        return _worker_with(
            default_worker, settings, farm_env, log, queues, FARM_PLAN_RENDER_SECONDS=seconds, **env
        )

    return swap


def _render(client: Any, key: Key, code: str, cls: str) -> dict[str, Any]:
    job = wait_for(client, key, submit(client, key, code, cls), timeout=240)
    assert job["status"] == "completed", job.get("error")
    return job


def _plays(pool: Any, job_id: str) -> list[dict[str, Any]]:
    """The job's plays, each with how many chunk steps the job had and the frames they drew."""
    with pool.connection() as conn:
        plays = anim_cache.job_plays(conn, job_id)
        chunks = conn.execute(
            "SELECT count(*) AS n, coalesce(sum(frames), 0) AS frames FROM steps"
            " WHERE job_id = %s AND kind = 'chunk'",
            (job_id,),
        ).fetchone()
    assert plays is not None
    for play in plays:
        play["chunk_steps"], play["chunk_frames"] = chunks["n"], chunks["frames"]
    return plays


def _same_as_plain(job: dict[str, Any], code: str, cls: str, work: Path) -> None:
    """The job's video (frames and length) and captions are plain manim's."""
    video = download(job["result"]["video"], work / "farm.mp4")
    plain, plain_srt = scenes.plain_manim_render(code, cls, work / "plain", size=(854, 480), fps=15)
    assert scenes.frame_md5s(video) == scenes.frame_md5s(plain)
    assert scenes.duration_s(video) == scenes.duration_s(plain)
    vtt = download(job["result"]["captions"], work / "farm.vtt").read_text()
    expected = scenes.srt_cues(plain_srt.read_text()) if plain_srt is not None else []
    assert scenes.vtt_cues(vtt) == expected


def test_a_short_scene_is_finished_by_its_plan(
    default_worker: Process, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a short scene nobody rendered before
    key = make_key()
    code = FOUR + f"# {unique()}\n"
    # When it is rendered
    job = _render(client, key, code, "Four")
    # Then its plan drew every animation: no chunk step, nothing left for another worker, and
    # nothing for the helper pass on its CPUs (which waits for the plan to draw for its budget
    # first, longer than this scene takes)
    plays = _plays(pool, job["jobId"])
    assert plays[0]["chunk_steps"] == 0
    assert not any(p.get("helper") for p in plays)
    assert job["progress"]["chunksTotal"] == 0
    assert all(p["object"] and p["plan"] for p in plays if p["frames"])
    # And the stitch joined the plan's own movie alone, not one part per animation
    with pool.connection() as conn:
        assert anim_cache.plan_media(conn, job["jobId"])["video"]  # type: ignore[index]
    # And the video and its captions are plain manim's
    _same_as_plain(job, code, "Four", tmp_path)
    vtt = download(job["result"]["captions"], tmp_path / "captions.vtt").read_text()
    assert "turning" in vtt


def test_an_edit_draws_only_the_edited_animation_and_in_the_plan(
    default_worker: Process, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a scene its owner rendered once
    key = make_key()
    marker = f"# {unique()}\n"
    first = _render(client, key, CHAIN + marker, "TransformChain")
    assert len(_plays(pool, first["jobId"])) == 6
    # When only its last animation is edited and the scene is rendered again
    edited = CHAIN.replace(
        "ReplacementTransform(m, Dot())", "ReplacementTransform(m, Dot(color=RED))"
    )
    assert edited != CHAIN
    job = _render(client, key, edited + marker, "TransformChain")
    # Then five animations come from the cache, the plan draws the sixth, and no chunk exists
    plays = _plays(pool, job["jobId"])
    assert [p["cached"] for p in plays] == [True] * 5 + [False]
    assert plays[5]["object"] and plays[0]["chunk_steps"] == 0
    # And the video is plain manim's of the edited scene
    _same_as_plain(job, edited + marker, "TransformChain", tmp_path)


def test_a_plan_that_spends_its_budget_hands_the_rest_to_chunks(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a worker whose plans may draw for 1 ms (the first animation, then no more) and end
    # before their chunks start (no hand-off, as for a scene with sounds)
    with budget_worker("plan-render-budget-worker", "0.001", FARM_PLAN_HANDOFF="false"):
        key = make_key()
        code = FOUR + f"# {unique()}\n"
        job = _render(client, key, code, "Four")
        plays = _plays(pool, job["jobId"])
    # Then the plan drew the first animation and the closing static wait (one frame, cheaper
    # than a chunk), and chunks drew exactly the two between
    assert [bool(p.get("plan")) for p in plays] == [True, False, False, True]
    assert plays[0]["chunk_steps"] >= 1 and job["progress"]["chunksTotal"] >= 1
    assert plays[0]["chunk_frames"] == plays[1]["frames"] + plays[2]["frames"]
    assert all(p["object"] for p in plays)  # the stitch joined every movie by its key
    with pool.connection() as conn:  # not the plan's movie: it lacks the chunks' animations
        assert anim_cache.plan_media(conn, job["jobId"])["video"] is None  # type: ignore[index]
    # And the video joined from both is plain manim's
    _same_as_plain(job, code, "Four", tmp_path)


# --- the plan's report of what it drew is checked like a chunk's -------------------------------

PLAN = {"ok": True, "durations": [0.4, 0.2], "hashes": ["a" * 64, "b" * 64], "sounds": []}
DRAWN = {"frames": 6, "animations": 1, "video": True, "captions": False}


@pytest.mark.parametrize(
    ("plays", "why"),
    [
        ([[0, 7, "a" * 64]], "more frames than planned for the play"),
        ([[0, 6, "b" * 64]], "another play's hash"),
        ([[2, 6, "a" * 64]], "a play the plan does not have"),
        ([[0, 6, "a" * 64], [0, 6, "a" * 64]], "the same play twice"),
    ],
)
def test_a_plans_drawn_plays_must_be_the_ones_it_planned(plays: list[Any], why: str) -> None:
    with pytest.raises(OutputError):
        parse_plan_full({**PLAN, **DRAWN, "plays": plays}, 600.0, fps=15)
    parsed = parse_plan_full({**PLAN, **DRAWN, "plays": [[0, 6, "a" * 64]]}, 600.0, fps=15)
    assert parsed["drawn"]["plays"] == [(0, 6, "a" * 64)]
    # A plan not asked to draw may not report drawings
    with pytest.raises(OutputError):
        parse_plan_full({**PLAN, **DRAWN, "plays": [[0, 6, "a" * 64]]}, 600.0)


# --- a plan that leaves chunks draws chunk 0 itself (the hand-off) ------------------------------

# Three plays, no sound or subcaption; drawing the second one takes 3 s longer.
SLOW_SECOND = """
import time
from manim import *

class SlowSecond(Scene):
    def construct(self):
        s = Square()
        self.play(Create(s), run_time=0.5)
        if not config.dry_run:
            time.sleep({sleep})
        self.play(Rotate(s, PI / 4), run_time=0.5, subcaption="turning")
        self.play(FadeOut(s), run_time=0.5)
"""


def _steps(pool: Any, job_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind, idx, status, attempt, started_at, finished_at, first_animation,"
            " last_animation, frames FROM steps WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {(r["kind"], r["idx"]): r for r in rows}


def test_a_plan_that_leaves_chunks_draws_chunk_0_in_its_own_process(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a worker whose plans may draw for 1 ms (the first animation, then no more), and a
    # scene of six animations with neither sounds nor subcaptions
    with budget_worker("plan-handoff-worker", "0.001"):
        code = CHAIN + f"# {unique()}\n"
        job = _render(client, make_key(), code, "TransformChain")
    steps, plays = _steps(pool, job["jobId"]), _plays(pool, job["jobId"])
    plan, head = steps[("plan", 0)], steps[("chunk", 0)]
    # Then chunk 0 started in the transaction that recorded the plan, in its first attempt:
    # the plan's own process drew it, no queue between, while chunk 1 went to the queue
    assert job["progress"]["chunksTotal"] == 2
    assert (head["started_at"], head["attempt"]) == (plan["finished_at"], 1)
    assert steps[("chunk", 1)]["started_at"] > plan["finished_at"]
    # And chunk 0's video holds the animation the plan drew before it knew the whole scene as
    # well as those it drew after the hand-off; every movie went into the owner's cache
    assert head["first_animation"] == 0
    assert head["frames"] == sum(p["frames"] for p in plays[: head["last_animation"]])
    assert not any(p.get("plan") for p in plays)
    assert all(p["object"] for p in plays if p["frames"])
    # And the video is plain manim's
    _same_as_plain(job, code, "TransformChain", tmp_path)


def test_a_split_job_is_stitched_by_the_worker_of_its_last_chunk(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any
) -> None:
    # Given a worker that takes nothing from the stitch queue, and plans that leave two chunks
    no_stitch_queue = ",".join(q for q in ALL_QUEUES.split(",") if q != "stitch")
    with budget_worker("no-stitch-queue-worker", "0", no_stitch_queue):
        job = _render(client, make_key(), CHAIN + f"# {unique()}\n", "TransformChain")
    # Then the job was split and stitched all the same, after its last chunk, in one attempt:
    # by that chunk's worker, with no hop through the stitch queue
    steps = _steps(pool, job["jobId"])
    chunks = [step for (kind, _), step in steps.items() if kind == "chunk"]
    assert len(chunks) == 2
    stitch = steps[("stitch", 0)]
    assert stitch["attempt"] == 1
    assert stitch["started_at"] >= max(chunk["finished_at"] for chunk in chunks)


def test_a_worker_killed_while_its_plan_draws_chunk_0_loses_nothing(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given plans that draw nothing before the hand-off, and a scene with a subcaption whose
    # chunk 0 then takes 3 s to draw in the plan's process
    with budget_worker("plan-handoff-kill-worker", "0") as w:
        key = make_key()
        code = SLOW_SECOND.format(sleep=3) + f"# {unique()}\n"
        job_id = submit(client, key, code, "SlowSecond")
        deadline = time.monotonic() + 60
        while True:
            steps = _steps(pool, job_id)
            head = steps.get(("chunk", 0))
            if head is not None and head["status"] == "running" and w.render_children():
                break
            assert time.monotonic() < deadline, "chunk 0 never started"
            time.sleep(0.1)
        assert steps[("plan", 0)]["status"] == "done" and head["attempt"] == 1
        assert head["started_at"] == steps[("plan", 0)]["finished_at"]  # the plan's process
        # When the worker (its plan's process with it) is SIGKILLed mid-chunk
        w.kill(signal.SIGKILL)
        w.start()
        # Then chunk 0's lease runs out, another attempt draws it, and the job completes once
        job = wait_for(client, key, job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    steps = _steps(pool, job_id)
    assert steps[("plan", 0)]["attempt"] == 1 and steps[("chunk", 0)]["attempt"] == 2
    # And its video and captions (stored with the plan at the hand-off) are plain manim's
    _same_as_plain(job, code, "SlowSecond", tmp_path)


# Eight one-second plays: drawing and encoding each takes many times as long as simulating it,
# so a helper pass, started just after the plan, soon reaches plays the plan has not.
SLOW_PLAYS = """
from manim import *

class SlowPlays(Scene):
    def construct(self):
        shapes = VGroup(Square(), Circle(), Triangle()).arrange(RIGHT)
        self.add(shapes)
        for i in range(8):
            self.play(shapes.animate.rotate(PI / 4).shift(0.2 * (-1) ** i * UP), run_time=1)
"""


def test_a_plan_with_a_free_slot_draws_beside_a_helper_pass(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a worker with two render slots whose plans add helper passes, which, on the plan's
    # own CPUs, start once it has drawn for its budget (here 50 ms; by default a second, so
    # that a short scene is drawn by its plan alone)
    with budget_worker("plan-helpers-worker", "0.05", **HELPERS):
        code = SLOW_PLAYS + f"# {unique()}\n"
        # When a scene of eight slow animations is rendered
        job = _render(client, make_key(), code, "SlowPlays")
    steps, plays = _steps(pool, job["jobId"]), _plays(pool, job["jobId"])
    # Then a helper pass ran beside the plan on the free slot and drew some of the animations,
    # the plan the others, each exactly once, and no chunk was needed
    assert steps[("plan", 1)]["status"] == "done"
    by_helper = [i for i, p in enumerate(plays) if p.get("helper")]
    by_plan = [i for i, p in enumerate(plays) if p.get("plan")]
    assert by_helper and by_plan and sorted(by_helper + by_plan) == list(range(8))
    assert plays[0]["chunk_steps"] == 0
    # And what the helper drew is no cache hit (nothing was cached), yet went into the cache
    assert not any(p["cached"] for p in plays) and all(p["object"] for p in plays)
    # And the video is plain manim's, frame for frame
    _same_as_plain(job, code, "SlowPlays", tmp_path)


def test_a_play_a_helper_claimed_but_never_stored_is_drawn_by_a_chunk(
    budget_worker: BudgetWorker,
    client: Any,
    make_key: Any,
    pool: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a job whose third animation is claimed by a helper pass that never runs (as if its
    # worker died before it stored anything), submitted while no worker takes it
    key = make_key()
    code = SLOW_PLAYS + f"# {unique()}\n"
    with budget_worker("plan-helpers-lost-idle-worker", "0", queues="webhooks"):
        job_id = submit(client, key, code, "SlowPlays")
        PlayClaims(redis.Redis.from_url(settings.redis_url), job_id).claim(2, passer=7)
    # When a worker whose plans add helpers plans it
    with budget_worker("plan-helpers-lost-worker", "0.05", **HELPERS):
        job = wait_for(client, key, job_id, timeout=240)
    # Then the plan waited for that helper, found it was not running, and left the animation
    # to a chunk: the job completed all the same, with plain manim's video
    assert job["status"] == "completed", job.get("error")
    plays = _plays(pool, job_id)
    assert not plays[2].get("plan") and not plays[2].get("helper")
    assert plays[0]["chunk_steps"] == 1
    _same_as_plain(job, code, "SlowPlays", tmp_path)


def test_a_scene_with_sounds_drawn_beside_a_helper_keeps_plain_manims_track(
    budget_worker: BudgetWorker, client: Any, make_key: Any, pool: Any, tmp_path: Path
) -> None:
    # Given a scene that adds a sound before each of its animations, and plans with helpers
    from tests.test_fidelity import audio_md5s

    code = (Path(__file__).parent / "corpus" / "c20_sound_every_chunk.py").read_text()
    code += f"# {unique()}\n"
    with budget_worker("plan-helpers-sound-worker", "0.05", **HELPERS):
        job = _render(client, make_key(), code, "SoundEveryChunk")
    # Then the video and its one audio track (the plan's sounds, laid at the stitch) are plain
    # manim's, whichever pass drew each animation
    video = download(job["result"]["video"], tmp_path / "farm.mp4")
    plain, _ = scenes.plain_manim_render(
        code, "SoundEveryChunk", tmp_path / "plain", size=(854, 480), fps=15
    )
    assert scenes.frame_md5s(video) == scenes.frame_md5s(plain)
    assert audio_md5s(video) == audio_md5s(plain) and audio_md5s(plain)


def test_a_worker_killed_while_its_plan_and_helper_draw_loses_nothing(
    budget_worker: BudgetWorker,
    client: Any,
    make_key: Any,
    pool: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a plan and its helper drawing a scene of eight animations on one worker, the
    # helper holding an animation it claimed
    claims = redis.Redis.from_url(settings.redis_url)
    with budget_worker("plan-helpers-kill-worker", "0.05", **HELPERS) as w:
        key = make_key()
        code = SLOW_PLAYS + f"# {unique()}\n"
        job_id = submit(client, key, code, "SlowPlays")
        deadline = time.monotonic() + 60
        while b"1" not in claims.hvals(f"farm:plays:{job_id}:claims"):
            assert time.monotonic() < deadline, "the helper never claimed an animation"
            time.sleep(0.02)
        # When the worker (the plan's jail and the helper's with it) is SIGKILLed
        w.kill(signal.SIGKILL)
        w.start()
        # Then the plan's lease runs out, its next attempt draws again what it had claimed,
        # what the dead helper held goes to a chunk, and the job completes once, with plain
        # manim's video
        job = wait_for(client, key, job_id, timeout=180)
    assert job["status"] == "completed", job.get("error")
    steps = _steps(pool, job_id)
    assert steps[("plan", 0)]["attempt"] == 2 and steps[("plan", 1)]["attempt"] == 1
    assert _plays(pool, job_id)[0]["chunk_steps"] >= 1  # what the dead helper held
    _same_as_plain(job, code, "SlowPlays", tmp_path)


def test_an_edit_with_much_left_to_draw_gets_helpers_once_the_plan_drew_for_its_budget(
    budget_worker: BudgetWorker,
    client: Any,
    make_key: Any,
    pool: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a scene its owner rendered once, then edited from its second animation on (the
    # first shifts by the same vector), and plans whose budget is 50 ms
    key = make_key()
    marker = f"# {unique()}\n"
    edited = SLOW_PLAYS.replace("* UP)", "* UP + 0.1 * i * RIGHT)")
    assert edited != SLOW_PLAYS
    with budget_worker("plan-helpers-edit-worker", "0.05", **HELPERS):
        _render(client, key, SLOW_PLAYS + marker, "SlowPlays")
        job = _render(client, key, edited + marker, "SlowPlays")
    # Then the plan drew the first animation the cache lacked, added its helper once it had
    # drawn for its budget, and said when it began to draw (what a helper on its CPUs counts
    # its wait from: without it, the helper waits for the plan's end and draws nothing)
    plays = _plays(pool, job["jobId"])
    assert plays[0]["cached"] and not plays[1]["cached"]
    assert ("plan", 1) in _steps(pool, job["jobId"])
    said = PlayClaims(redis.Redis.from_url(settings.redis_url), job["jobId"]).helpers()
    assert said.plan_drawing is not None
    _same_as_plain(job, edited + marker, "SlowPlays", tmp_path)


SLOW_SET_UP = """
import time
from manim import *

class SlowSetUp(Scene):
    def construct(self):
        time.sleep(1.5)  # a long set-up: fonts, data, LaTeX, before the first animation
        square = Square()
        self.play(Create(square), run_time=1)
        self.play(square.animate.shift(RIGHT), run_time=1)
"""


def test_a_new_scenes_plan_adds_its_helpers_as_its_pass_starts(
    budget_worker: BudgetWorker,
    client: Any,
    make_key: Any,
    pool: Any,
    settings: Settings,
) -> None:
    # Given a worker with two render slots whose plans add helper passes, and a scene its owner
    # never rendered that sets up for 1.5 s before its first animation
    with budget_worker("plan-helpers-early-worker", "0.05", **HELPERS):
        # When it is rendered
        job = _render(client, make_key(), SLOW_SET_UP + f"# {unique()}\n", "SlowSetUp")
    # Then the plan said where it runs and added its helper as its pass started: the helper
    # step began while the plan was still setting up, long before the plan drew (a helper on
    # other CPUs runs its own set-up then; one on the plan's CPUs, as here, waits for the
    # plan's budget of drawing)
    said = PlayClaims(redis.Redis.from_url(settings.redis_url), job["jobId"]).helpers()
    assert said.plan_where and said.plan_drawing is not None
    helper = _steps(pool, job["jobId"])[("plan", 1)]
    assert helper["started_at"].timestamp() < said.plan_drawing - 0.75

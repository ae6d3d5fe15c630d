"""Chunk planning: split a scene's animations into consecutive ranges of balanced cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    first: int  # first animation index, inclusive
    last: int  # last animation index, exclusive
    seconds: float


def plan_chunks(
    durations: list[float],
    fps: int,
    *,
    parallelism: int,
    min_chunk_seconds: float,
    skip_weight: float = 0.0,
) -> list[ChunkPlan]:
    """Consecutive ranges of animations, at most ``parallelism`` of them, of balanced cost.

    A chunk costs its own frames, plus ``skip_weight`` per frame before it: every chunk runs the
    scene from the top and simulates (without drawing) what comes before its range, so later
    chunks get fewer frames. A scene shorter than ``min_chunk_seconds`` per chunk is not split
    further: start-up would eat the gain.

    An animation of no frames (a play the scene's own section skips) never starts a chunk: it
    joins the chunk before it (or, before the first drawn animation, the first chunk), so
    every chunk draws something.
    """
    if not durations:
        return [ChunkPlan(0, 0, 0.0)]
    frames = [max(0, round(d * fps)) for d in durations]
    if sum(frames) == 0:
        return [ChunkPlan(0, len(durations), sum(durations))]
    drawn = sum(1 for f in frames if f > 0)
    n = max(
        1,
        min(parallelism, drawn, int(sum(durations) // max(min_chunk_seconds, 1e-9))),
    )
    # Smallest cost bound under which a greedy left-to-right split needs at most n chunks.
    low, high = float(max(frames)), float(sum(frames) * (1 + skip_weight))
    best = _split(frames, high, skip_weight)
    for _ in range(40):
        bound = (low + high) / 2
        cuts = _split(frames, bound, skip_weight)
        if len(cuts) <= n:
            best, high = cuts, bound
        else:
            low = bound
    return [ChunkPlan(a, b, sum(durations[a:b])) for a, b in best]


def _split(frames: list[int], bound: float, skip_weight: float) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < len(frames):
        cost = skip_weight * sum(frames[:start])
        end = start
        # A chunk takes at least one drawn animation; no-frame ones join the chunk before.
        while end < len(frames) and (
            end == start or cost + frames[end] <= bound or not any(frames[start:end])
        ):
            cost += frames[end]
            end += 1
        if ranges and not any(frames[start:end]):
            ranges[-1] = (ranges[-1][0], end)  # trailing no-frame animations
        else:
            ranges.append((start, end))
        start = end
    return ranges


# Seconds to render and encode one frame per megapixel with the cairo renderer, measured on the
# 2-core development machine (a `high` frame, 2.07 MP, took about 0.044 s). Only the ratio to
# the measured planning speed matters, so a different machine shifts the balance slightly.
RENDER_SECONDS_PER_MEGAPIXEL = 0.021


MAX_SKIP_WEIGHT = 0.5


def skip_weight(plan_seconds: float, total_frames: int, width: int, height: int) -> float:
    """Cost of simulating one skipped frame relative to rendering one, from the plan's timing.

    Capped: in tiny scenes the plan's fixed start-up dominates its time, and a skipped frame
    never really costs as much as a drawn and encoded one (about a tenth at `high`).
    """
    render_per_frame = RENDER_SECONDS_PER_MEGAPIXEL * width * height / 1e6
    return min(MAX_SKIP_WEIGHT, plan_seconds / max(total_frames, 1) / render_per_frame)

"""Chunk planning: split a scene's animations into consecutive ranges of balanced cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    first: int  # first animation index, inclusive
    last: int  # last animation index, exclusive
    seconds: float


def plan_chunks(
    durations: list[float], fps: int, *, parallelism: int, min_chunk_seconds: float
) -> list[ChunkPlan]:
    """Consecutive ranges of animations, at most ``parallelism`` of them, balanced by frames.

    Every frame of one job has the same pixel count, so frames are the cost. A scene shorter than
    ``min_chunk_seconds`` per chunk is not split further: start-up would eat the gain.
    """
    if not durations:
        return [ChunkPlan(0, 0, 0.0)]
    frames = [max(1, round(d * fps)) for d in durations]
    total_seconds = sum(durations)
    n = max(1, min(parallelism, len(durations), int(total_seconds // max(min_chunk_seconds, 1e-9))))
    total = sum(frames)
    chunks: list[ChunkPlan] = []
    start, acc = 0, 0
    for i, cost in enumerate(frames):
        acc += cost
        remaining_chunks = n - len(chunks) - 1
        remaining_anims = len(frames) - i - 1
        target = total * (len(chunks) + 1) / n
        # Close the chunk at the cut nearest its target, keeping one animation for each later chunk.
        if remaining_chunks and (acc >= target or remaining_anims == remaining_chunks):
            overshoot = acc - target
            if overshoot > cost / 2 and i > start and remaining_anims + 1 > remaining_chunks:
                chunks.append(ChunkPlan(start, i, sum(durations[start:i])))
                start = i
            else:
                chunks.append(ChunkPlan(start, i + 1, sum(durations[start : i + 1])))
                start = i + 1
    chunks.append(ChunkPlan(start, len(frames), sum(durations[start:])))
    return [c for c in chunks if c.last > c.first]

"""Chunk planning (pure functions)."""

from __future__ import annotations

from itertools import pairwise

from farm.planner import ChunkPlan, plan_chunks, skip_weight


def _ranges(plan: list) -> list[tuple[int, int]]:
    return [(c.first, c.last) for c in plan]


def test_equal_animations_split_evenly() -> None:
    plan = plan_chunks([1.0] * 12, 30, parallelism=2, min_chunk_seconds=2)
    assert _ranges(plan) == [(0, 6), (6, 12)]
    assert [c.seconds for c in plan] == [6.0, 6.0]


def test_later_chunks_get_fewer_frames_when_skipping_costs() -> None:
    plan = plan_chunks([1.0] * 12, 30, parallelism=2, min_chunk_seconds=2, skip_weight=0.2)
    assert _ranges(plan) == [(0, 7), (7, 12)]


def test_ranges_cover_every_animation_once() -> None:
    durations = [0.3, 2.0, 0.1, 0.7, 1.1, 0.5, 3.0, 0.2, 0.9]
    for parallelism in range(1, 8):
        plan = plan_chunks(
            durations, 15, parallelism=parallelism, min_chunk_seconds=0.5, skip_weight=0.1
        )
        assert len(plan) <= parallelism
        assert plan[0].first == 0 and plan[-1].last == len(durations)
        assert all(a.last == b.first for a, b in pairwise(plan))


def test_one_long_animation_is_one_chunk() -> None:
    assert _ranges(plan_chunks([5.0], 30, parallelism=4, min_chunk_seconds=1)) == [(0, 1)]


def test_short_scenes_are_not_over_split() -> None:
    plan = plan_chunks([0.4] * 6, 30, parallelism=4, min_chunk_seconds=2)
    assert len(plan) == 1


def test_scene_without_animations_is_one_empty_chunk() -> None:
    assert _ranges(plan_chunks([], 30, parallelism=4, min_chunk_seconds=1)) == [(0, 0)]


def test_skip_weight_is_the_ratio_of_plan_to_render_speed() -> None:
    # planning 300 frames in 1.3 s vs ~0.044 s to render one 1920x1080 frame
    assert 0.09 < skip_weight(1.3, 300, 1920, 1080) < 0.11
    assert skip_weight(100.0, 1, 10, 10) == 0.5  # capped
    # two short animations still make two chunks at the cap
    plan = plan_chunks([0.6, 0.6], 5, parallelism=2, min_chunk_seconds=0.5, skip_weight=0.5)
    assert len(plan) == 2


def test_plays_the_scene_skips_never_form_a_chunk() -> None:
    # Given plays of no frames (a section with skip_animations=True) at the start, middle, end
    durations = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    for parallelism in range(1, 8):
        for weight in (0.0, 0.5, 5.0):
            chunks = plan_chunks(
                durations, 15, parallelism=parallelism, min_chunk_seconds=0.1, skip_weight=weight
            )
            # Then every animation is in exactly one chunk, and every chunk draws frames
            assert chunks[0].first == 0 and chunks[-1].last == len(durations)
            assert all(a.last == b.first for a, b in pairwise(chunks))
            assert all(c.seconds > 0 for c in chunks), (parallelism, weight, chunks)
            assert len(chunks) <= min(parallelism, 4)


def test_a_scene_skipping_everything_is_one_chunk() -> None:
    assert plan_chunks([0.0, 0.0], 15, parallelism=4, min_chunk_seconds=0.1) == [
        ChunkPlan(0, 2, 0.0)
    ]

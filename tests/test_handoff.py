"""The worker's side of a plan's hand-off (workers/jail/handoff.py): what the program writes on
the pipe is the scene's bytes, read like a report; anything else gets an empty answer."""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
from typing import Any

import pytest

from workers import media
from workers.jail import handoff, outputs
from workers.media import check


class Program:
    """The program's ends of a channel, as a spawned program holds them."""

    def __init__(self, channel: handoff.Channel) -> None:
        self.to_worker, self.from_worker = (os.dup(fd) for fd in channel.program_fds())
        channel.spawned()

    def writes(self, data: bytes, close: bool = True) -> None:
        with contextlib.suppress(BrokenPipeError):  # the worker stopped reading
            while data:
                data = data[os.write(self.to_worker, data) :]
        if close:
            os.close(self.to_worker)

    def answer(self) -> Any:
        return json.loads(os.read(self.from_worker, 65536))


def _channel(answer: dict[str, Any] | None = None) -> tuple[handoff.Channel, Program, list[Any]]:
    seen: list[Any] = []

    def on_plan(plan: dict[str, Any]) -> tuple[dict[str, Any] | None, float | None]:
        seen.append(plan)
        return answer, 60.0

    channel = handoff.Channel()
    channel.on_plan = on_plan
    return channel, Program(channel), seen


def _read_all(channel: handoff.Channel) -> float | None:
    wall = None
    while channel.open:
        wall = channel.readable()
    return wall


def test_a_plan_line_is_answered_and_restarts_the_wall_clock() -> None:
    # Given a program that writes its plan as one line (and keeps its end open, as it does)
    channel, program, seen = _channel({"draw": {"from": 0, "upto": 3}})
    program.writes(b'{"ok": true, "durations": [0.5]}\n', close=False)
    # When the worker reads it
    wall = _read_all(channel)
    # Then the step saw the plan, the program its range, and the run a new wall clock
    assert seen == [{"ok": True, "durations": [0.5]}]
    assert program.answer() == {"draw": {"from": 0, "upto": 3}}
    assert wall == 60.0


@pytest.mark.parametrize(
    "data",
    [
        b"not json\n",
        b'{"ok": true, "durations": [NaN]}\n',  # Python's json takes NaN; the farm does not
        b"[1, 2]\n",
        b'{"ok": true}',  # no newline before the program closed its end
        b"",
    ],
)
def test_anything_but_a_plan_line_gets_an_empty_answer(data: bytes) -> None:
    channel, program, seen = _channel({"draw": {"from": 0}})
    program.writes(data)
    _read_all(channel)
    assert seen == [] and program.answer() == {"draw": None}


def test_a_line_longer_than_a_report_is_refused_unread() -> None:
    # Given a program that writes more than a report may hold, with no newline
    blob = b'{"ok": true, "pad": "' + b"x" * outputs.REPORT_BYTES
    channel, program, seen = _channel({"draw": {"from": 0}})
    # (a writer thread: a pipe holds 64 KiB, the test must read while it writes)
    writer = threading.Thread(target=program.writes, args=(blob, False))
    writer.start()
    # When the worker reads past the cap: no plan, an empty answer, the channel closed
    while channel.open:
        select.select([channel.fd], [], [], 1.0)
        channel.readable()
    assert seen == [] and program.answer() == {"draw": None}
    writer.join(timeout=10)  # its writes fail once the worker closed its end


# The cues a plan offers with its hand-off (the scene's subcaptions, parsed in its jail) are
# checked as a media jail's are before the worker stores them.
@pytest.mark.parametrize(
    "cues",
    [
        None,
        "0 --> 1000 hello",
        [[0, 1000]],
        [[0, 1000, 7]],
        [[True, 1000, "a bool is not a time"]],
        [[0.5, 1000, "nor is a float"]],
        [[-1, 1000, "before the scene"]],
        [[0, 10**12, "after it"]],
        [[2000, 1000, "ends before it starts"]],
        [[0, 1, "x"]] * (check.MAX_CUES + 1),
    ],
)
def test_offered_cues_out_of_shape_or_bounds_are_refused(cues: Any) -> None:
    with pytest.raises(media.MediaError):
        media.cues_from_report(cues, max_ms=60_000)


def test_offered_cues_are_kept_with_their_text_capped() -> None:
    long = "y" * (check.MAX_CUE_TEXT + 10)
    cues = media.cues_from_report([[0, 500, "hello"], [500, 900, long]], max_ms=60_000)
    assert [(c.start_ms, c.end_ms, c.text) for c in cues] == [
        (0, 500, "hello"),
        (500, 900, "y" * check.MAX_CUE_TEXT),
    ]

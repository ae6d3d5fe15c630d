"""Which pass of a job draws each animation (farm/play_claims.py), against the real Redis, and
the claim lines a pass sends its worker (workers/jail/handoff.py)."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import uuid
from typing import Any

import redis

from farm.config import Settings
from farm.play_claims import PlayClaims
from workers.jail import handoff, outputs


def _claims(settings: Settings) -> PlayClaims:
    return PlayClaims(redis.Redis.from_url(settings.redis_url), f"job_{uuid.uuid4().hex}")


def test_the_first_pass_to_reach_a_play_draws_it(settings: Settings) -> None:
    claims = _claims(settings)
    # Given the plan reached play 0 first, a helper play 1
    assert claims.claim(0, passer=0) == (0, False)
    assert claims.claim(1, passer=2) == (2, False)
    # Then every other pass hears who holds them, and a holder asking again keeps its play
    assert claims.claim(0, passer=2) == (0, False)
    assert claims.claim(1, passer=0) == (2, False)
    assert claims.claim(0, passer=0) == (0, False)
    # And once the plan's pass has ended, every pass that asks hears so
    claims.plan_ended()
    assert claims.claim(2, passer=2) == (2, True)


def test_helpers_say_what_they_stored_and_when_they_are_done(settings: Settings) -> None:
    claims = _claims(settings)
    claims.drew(3, "ab" * 32)
    claims.ended(2)
    said = claims.helpers()
    assert said.drew == {3: "ab" * 32} and said.ended == {2} and not said.plan_ended
    claims.plan_ended()
    assert claims.helpers().plan_ended


class Program:
    """The program's ends of a channel, as a spawned program holds them."""

    def __init__(self, channel: handoff.Channel) -> None:
        self.to_worker, self.from_worker = (os.dup(fd) for fd in channel.program_fds())
        channel.spawned()

    def ask(self, line: bytes) -> None:
        os.write(self.to_worker, line)

    def answers(self) -> bytes:
        return os.read(self.from_worker, 65536)


def _channel() -> tuple[handoff.Channel, Program, list[Any]]:
    asked: list[Any] = []

    def on_claim(play: int) -> str:
        asked.append(play)
        return ("draw", "skip", "stop")[play % 3]

    channel = handoff.Channel()
    channel.on_claim = on_claim
    return channel, Program(channel), asked


def test_each_claim_line_is_answered_and_the_channel_stays_open() -> None:
    channel, program, asked = _channel()
    shares = iter([2, 1, 1])  # another pass started on the node after the first answer
    channel.encoders = lambda: next(shares)
    # Given a pass that asks for two plays in one write, then a third
    program.ask(b'{"claim": 0}\n{"claim": 1}\n')
    channel.readable()
    program.ask(b'{"claim": 2}\n')
    channel.readable()
    # Then each was answered, in order, with the pass's share of encoders at the time, and the
    # channel is open for the next
    assert asked == [0, 1, 2]
    assert program.answers() == (
        b'{"draw": true, "stop": false, "encoders": 2}\n'
        b'{"draw": false, "stop": false, "encoders": 1}\n'
        b'{"draw": false, "stop": true, "encoders": 1}\n'
    )
    assert channel.open


def test_a_line_that_is_no_claim_closes_the_channel_and_the_pass_draws_on() -> None:
    channel, program, asked = _channel()
    # Given a pass (or the scene in it) that writes a claim out of shape
    program.ask(b'{"claim": -1}\n')
    channel.readable()
    # Then nothing was asked, the answer is empty and the channel closed
    assert asked == [] and program.answers() == b'{"draw": null}\n' and not channel.open


def test_a_pass_may_not_claim_more_plays_than_a_scene_has() -> None:
    channel, program, asked = _channel()
    lines = b"".join(b'{"claim": %d}\n' % (i % 7) for i in range(outputs.MAX_ANIMATIONS + 1))
    # (threads: a pipe holds 64 KiB each way, and the worker answers as it reads)
    writer = threading.Thread(target=_write_all, args=(program.to_worker, lines))
    reader = threading.Thread(target=_read_all, args=(program.from_worker,))
    writer.start()
    reader.start()
    while channel.open:
        select.select([channel.fd], [], [], 1.0)
        channel.readable()
    assert len(asked) == outputs.MAX_ANIMATIONS
    writer.join(timeout=30)
    reader.join(timeout=30)  # it read to the end: the worker closed its side
    assert not reader.is_alive()


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):  # the worker closed its end
        while data:
            data = data[os.write(fd, data) :]


def _read_all(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def test_a_helper_shares_its_plans_cpus_only_on_its_host_and_cpus() -> None:
    # (a helper that does waits for the plan's budget before it starts: helpers._start)
    from workers.steps import helpers

    here = helpers._where()
    host = here.partition("/")[0]
    assert helpers._shares_cpus(here)
    assert not helpers._shares_cpus(f"{host}-elsewhere/{here.partition('/')[2]}")
    assert not helpers._shares_cpus(f"{host}/{max(os.sched_getaffinity(0)) + 1}")

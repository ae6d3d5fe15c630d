"""The worker registry (real Redis): consumers and render slots per queue, as planners see them."""

from __future__ import annotations

import time

import redis

from farm.config import Settings
from tests.conftest import Process
from workers import registry


def test_slots_are_summed_per_queue_over_the_workers_that_beat(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(f"{registry.CONSUMER_KEY}*"):
        client.delete(key)
    # Given two workers on render.high (2 and 3 slots) and one on render.low, stitch (1 slot)
    client.set(f"{registry.CONSUMER_KEY}a:1", "render.high,stitch|2", ex=30)
    client.set(f"{registry.CONSUMER_KEY}b:2", "render.high|3", ex=30)
    client.set(f"{registry.CONSUMER_KEY}c:3", "render.low,stitch|1", ex=30)
    try:
        # Then a planner of a high job sees 5 slots, of a low one 1, of a 4K one none
        assert registry.queue_slots(client, "render.high") == 5
        assert registry.queue_slots(client, "render.low") == 1
        assert registry.queue_slots(client, "render.fourk") == 0
        # And the scheduler counts consumers, not slots
        consumers = registry.queue_consumers(client)
        assert consumers["render.high"] == 2 and consumers["stitch"] == 2
        assert consumers["render.fourk"] == 0
    finally:
        for key in client.scan_iter(f"{registry.CONSUMER_KEY}*"):
            client.delete(key)


def test_a_worker_announces_its_slots_and_withdraws_them_when_it_stops(
    settings: Settings, worker: Process
) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    # Given the session's worker (every queue, two slots), announced and consuming (Celery said
    # "ready" since the worker last started: its shutdown handlers are in place)
    deadline = time.monotonic() + 60

    def ready() -> bool:
        since_start = worker.log.read_text(errors="replace").rsplit("metrics on :", 1)[-1]
        return registry.queue_slots(client, "render.low") == 2 and " ready." in since_start

    while not ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert registry.queue_slots(client, "render.low") == 2
    # When it stops, Then its slots are withdrawn at once, not when its entry expires
    worker.stop()
    try:
        assert registry.queue_slots(client, "render.low") == 0
    finally:
        worker.start()

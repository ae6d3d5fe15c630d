"""``build_services``: one typed bundle of what a farm process holds, against the real stores."""

from __future__ import annotations

import pytest

from farm.config import Settings
from farm.services import NoPublisher, Services, build_services
from tests.support import RecordingPublisher


def test_services_reach_every_store(settings: Settings) -> None:
    services = build_services(settings, pool_size=1)
    try:
        with services.pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert services.redis.ping()
        services.storage.ping()
        assert services.settings is settings
    finally:
        services.close()


def test_a_process_without_a_publisher_refuses_to_publish(settings: Settings) -> None:
    services = build_services(settings, pool_size=1)
    services.close()
    assert isinstance(services.publisher, NoPublisher)
    with pytest.raises(RuntimeError, match="publishes no work"):
        services.publisher.step("job_x", "plan", 0, "low")
    with pytest.raises(RuntimeError, match="publishes no work"):
        services.publisher.webhook("job_x", 1)


def test_the_publisher_handed_in_is_the_one_used(settings: Settings) -> None:
    recording = RecordingPublisher()
    services = build_services(settings, recording, pool_size=1)
    services.close()
    services.publisher.step("job_x", "plan", 0, "low")
    assert recording.sent == [("step", "job_x", "plan", 0, "low")]


def test_services_are_typed_against_the_protocols() -> None:
    # Code that uses the services depends on the interfaces, not on minio or Celery
    hints = Services.__annotations__
    assert hints["storage"] == "Storage" and hints["publisher"] == "Publisher"

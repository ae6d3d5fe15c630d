"""Webhook delivery task body (filled in by the webhooks work)."""

from __future__ import annotations

from workers.runtime import Runtime


def deliver(rt: Runtime, job_id: str, attempt: int) -> None:
    return None

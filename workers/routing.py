"""The one routing table: which queue each task kind goes to, and the task names."""

from __future__ import annotations

from farm.presets import QUALITIES

TASKS = {
    "plan": "farm.plan_job",
    "chunk": "farm.render_chunk",
    "stitch": "farm.stitch_job",
    "webhook": "farm.deliver_webhook",
}

RENDER_QUEUES = tuple(f"render.{q}" for q in QUALITIES)
ALL_QUEUES = (*RENDER_QUEUES, "stitch", "webhooks")


def queue_for(kind: str, quality: str | None = None) -> str:
    """Plans and chunks run on their quality's pool; stitching and webhooks have their own."""
    if kind in ("plan", "chunk"):
        if quality not in QUALITIES:
            raise ValueError(f"unknown quality {quality!r}")
        return f"render.{quality}"
    if kind == "stitch":
        return "stitch"
    if kind == "webhook":
        return "webhooks"
    raise ValueError(f"unknown task kind {kind!r}")

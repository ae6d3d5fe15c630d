"""The S3 object key scheme: the one place a key is built.

Every object a step writes carries the attempt that wrote it (``-a<attempt>``), so a zombie
attempt (a worker stopped past its lease while another took over) can never overwrite the
owner's objects; a step's keys are recorded on its row only by the attempt that owns it at
commit, and an attempt that lost deletes what it wrote.
"""

from __future__ import annotations


def job_prefix(job_id: str) -> str:
    """Everything of one job (deleted with it)."""
    return f"jobs/{job_id}/"


def chunks_prefix(job_id: str) -> str:
    """The chunk videos and cues, deleted once the job's video is stitched."""
    return f"jobs/{job_id}/chunks/"


def chunk_video(job_id: str, idx: int, attempt: int) -> str:
    return f"{chunks_prefix(job_id)}{idx:04d}-a{attempt}.mp4"


def plan_video(job_id: str, attempt: int) -> str:
    """The movie of a plan that drew every animation: the stitch joins it alone."""
    return f"{chunks_prefix(job_id)}plan-a{attempt}.mp4"


def chunk_cues(job_id: str, idx: int, attempt: int) -> str:
    """The chunk's subtitles as the farm's own JSON cue list (parsed from SRT in a jail)."""
    return f"{chunks_prefix(job_id)}{idx:04d}-a{attempt}.cues.json"


def step_log(job_id: str, kind: str, idx: int, attempt: int) -> str:
    """What one attempt of a plan, chunk or stitch step printed (capped)."""
    return f"jobs/{job_id}/logs/{kind}-{idx}-a{attempt}.log"


def result_video(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/result-a{attempt}/video.mp4"


def result_thumbnail(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/result-a{attempt}/thumb.jpg"


def result_captions(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/result-a{attempt}/captions.vtt"


def result_log(job_id: str, attempt: int) -> str:
    """The job's render log: every owning step's log, in order."""
    return f"jobs/{job_id}/result-a{attempt}/render.log"


def asset_manifest(job_id: str) -> str:
    """The URLs a job's plan fetched, in order (JSON), for its chunks."""
    return f"jobs/{job_id}/assets.json"


def asset_cache(owner: str, digest: str) -> str:
    """An owner's cached copy of a fetched URL (``digest`` names it); ``.json`` beside it."""
    return f"assets/{owner}/{digest}"


def plan_sound(job_id: str, attempt: int, index: int) -> str:
    """A sound the plan recorded (decoded WAV, gain applied), for the stitch's audio track."""
    return f"jobs/{job_id}/plan-a{attempt}/sound-{index:04d}.wav"


def plan_cues(job_id: str, attempt: int) -> str:
    """The whole scene's subtitles, from its plan, as the farm's JSON cue list."""
    return f"jobs/{job_id}/plan-a{attempt}/cues.json"


def anim_movie(scope: str, key: str) -> str:
    """One play's movie in the owner's animation cache (farm/anim_cache.py)."""
    return f"anim-cache/{scope}/{key}.mp4"

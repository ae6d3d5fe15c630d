"""Request and response schemas of the v2 API (Kodisc's field names).

The OpenAPI document is generated from these. Requests ignore fields they don't know (a client
built for a newer Kodisc must not break); responses list every field as required, as Kodisc's
reference does."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from farm.presets import ASPECT_RATIOS, MAX_FPS, QUALITIES

# Metadata is echoed back on every read and webhook: bounded, so it stays cheap to store and
# serve, and shallow, so nothing that walks it recursively can be made to overflow.
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 16 * 1024
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class HttpsUrl(fields.Url):
    """An https:// URL (webhooks never go out in clear text)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(schemes={"https"}, require_tld=False, **kwargs)


def json_problem(value: Any, path: str = "body") -> str | None:
    """Why a parsed JSON value can't be stored as it is, naming where; None when it can.

    PostgreSQL's text and jsonb hold neither NUL characters nor lone surrogates (invalid in
    UTF-8), and JSON has no NaN or infinity (Python's parser accepts both). Iterative, so the
    depth of ``value`` doesn't matter here.
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return f"{where}: {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where}: must be a finite number (no NaN or Infinity)"
        elif isinstance(item, dict):
            for name, inner in item.items():
                problem = _text_problem(name)
                if problem:
                    return f"{where}: a key {problem}"
                stack.append((f"{where}.{name}", inner))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", inner) for i, inner in enumerate(item))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (it contains a lone surrogate)"
    return None


def json_depth(value: Any) -> int:
    """Nesting depth: 0 for a scalar, 1 for a flat list or object. Iterative."""
    deepest = 0
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        depth, item = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((depth + 1, v) for v in item.values())
        elif isinstance(item, list):
            stack.extend((depth + 1, v) for v in item)
    return deepest


class RenderRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "A whole Manim module."},
    )
    className = fields.String(
        required=True,
        metadata={
            "description": "The Scene subclass to render: a Python identifier.",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
        },
    )
    quality = fields.String(load_default="medium", validate=validate.OneOf(QUALITIES))
    aspectRatio = fields.String(load_default="16:9", validate=validate.OneOf(ASPECT_RATIOS))
    fps = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_FPS),
        metadata={
            "description": f"1 to {MAX_FPS} (an extension: Kodisc's reference allows up to 60);"
            " default: the quality's frame rate."
        },
    )
    metadata = fields.Raw(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "Any JSON, echoed back on the job and webhook payload; at most"
            f" {MAX_METADATA_DEPTH} levels deep and {MAX_METADATA_BYTES // 1024} KiB as compact"
            " JSON."
        },
    )
    webhookUrl = HttpsUrl(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=2048),
        metadata={
            "description": "HTTPS URL that receives the job's terminal event; overrides the"
            " key's default. null: no webhook for this job.",
            "pattern": "^https://",
            "format": "uri",
        },
    )
    seed = fields.Integer(
        load_default=0,
        strict=True,
        validate=validate.Range(min=0, max=2**32 - 1),
        metadata={
            "description": "Extension: the scene's random seed (manim's --seed; numpy's range). "
            "Every scene is seeded, 0 by default, so its chunks agree; plain manim seeds none."
        },
    )

    @validates("code")
    def _not_blank(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("must not be blank")

    @validates("className")
    def _identifier(self, value: str, **_: Any) -> None:
        # fullmatch: Python's "$" also matches before a trailing newline ("Hello\n").
        if not CLASS_NAME.fullmatch(value):
            raise ValidationError("must be a Python class name (a valid identifier)")

    @validates("metadata")
    def _bounded(self, value: Any, **_: Any) -> None:
        if json_depth(value) > MAX_METADATA_DEPTH:
            raise ValidationError(f"must be at most {MAX_METADATA_DEPTH} levels deep")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValidationError(
                f"must be at most {MAX_METADATA_BYTES} bytes as compact JSON (it is {size})"
            )


def _req(field: fields.Field[Any]) -> fields.Field[Any]:
    """A response field every answer carries (``required`` in the OpenAPI document)."""
    field.required = True
    return field


class SubmitResponseSchema(Schema):
    jobId = _req(fields.String())
    status = _req(fields.String(validate=validate.OneOf(["queued", "completed"])))
    endpoint = _req(fields.String(validate=validate.OneOf(["render"])))


class ResultSchema(Schema):
    video = _req(fields.String(metadata={"description": "Presigned URL of the MP4"}))
    thumbnail = _req(fields.String(metadata={"description": "Presigned URL of a JPEG"}))
    captions = _req(
        fields.String(
            metadata={"description": "Presigned URL of a WebVTT file (no cues without subcaptions)"}
        )
    )


class ProgressSchema(Schema):
    chunksDone = _req(fields.Integer())
    chunksTotal = _req(fields.Integer(allow_none=True))
    fraction = _req(fields.Float())


class JobSchema(Schema):
    jobId = _req(fields.String())
    endpoint = _req(fields.String(validate=validate.OneOf(["render"])))
    status = _req(
        fields.String(validate=validate.OneOf(["queued", "running", "completed", "failed"]))
    )
    creditsCost = _req(
        fields.Float(metadata={"description": "Credits the job consumed; 0 until it ends"})
    )
    durationMs = _req(fields.Integer(allow_none=True))
    result = _req(fields.Nested(ResultSchema, allow_none=True))
    error = _req(fields.String(allow_none=True))
    metadata = _req(fields.Raw(allow_none=True))
    createdAt = _req(fields.String(metadata={"format": "date-time"}))
    completedAt = _req(fields.String(allow_none=True, metadata={"format": "date-time"}))
    # Extensions (not in Kodisc's documents).
    progress = _req(fields.Nested(ProgressSchema))
    quality = _req(fields.String())
    aspectRatio = _req(fields.String())
    fps = _req(fields.Integer())
    renderer = _req(fields.String(allow_none=True))


class JobListSchema(Schema):
    jobs = _req(fields.List(fields.Nested(JobSchema)))
    nextCursor = _req(fields.String(allow_none=True))


class JobListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.String(validate=validate.OneOf(["queued", "running", "completed", "failed"]))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String()


class CreditsSchema(Schema):
    paid = _req(fields.Float(metadata={"description": "Granted credits; they never expire"}))
    free = _req(fields.Float(metadata={"description": "What is left of this month's allowance"}))
    total = _req(fields.Float())


class LimitsSchema(Schema):
    requestsPerSecond = _req(fields.Float())
    requestBurst = _req(fields.Integer())
    maxActiveJobs = _req(
        fields.Integer(metadata={"description": "Jobs that render at once; more wait queued"})
    )
    activeJobs = _req(fields.Integer(metadata={"description": "Unfinished jobs rendering"}))
    heldJobs = _req(fields.Integer(metadata={"description": "Queued jobs waiting for a slot"}))
    freeAllowance = _req(fields.Float(metadata={"description": "Free credits each month"}))


class MeSchema(Schema):
    userId = _req(fields.String())
    keyId = _req(fields.String())
    keyPrefix = _req(fields.String(metadata={"description": "First 16 characters of the key"}))
    credits = _req(fields.Nested(CreditsSchema))
    # Extensions.
    name = _req(fields.String())
    createdAt = _req(fields.String(metadata={"format": "date-time"}))
    limits = _req(fields.Nested(LimitsSchema))


class LogsSchema(Schema):
    jobId = _req(fields.String())
    log = _req(fields.String())
    truncated = _req(fields.Boolean())


class ErrorSchema(Schema):
    error = _req(fields.String(metadata={"description": "machine-readable code"}))
    message = _req(fields.String(metadata={"description": "for humans; names the field on 400"}))

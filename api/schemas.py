"""Request and response schemas of the v2 API (Kodisc's field names).

The OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from farm.presets import ASPECT_RATIOS, MAX_FPS, QUALITIES


class HttpsUrl(fields.Url):
    """An https:// URL (webhooks never go out in clear text)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(schemes={"https"}, require_tld=False, **kwargs)


class RenderRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    code = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "A whole Manim module."},
    )
    className = fields.String(
        required=True,
        validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$", error="must be a Python class name"),
    )
    quality = fields.String(load_default="medium", validate=validate.OneOf(QUALITIES))
    aspectRatio = fields.String(load_default="16:9", validate=validate.OneOf(ASPECT_RATIOS))
    fps = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_FPS),
    )
    metadata = fields.Raw(load_default=None, allow_none=True)
    webhookUrl = HttpsUrl(load_default=None, allow_none=True)
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


class SubmitResponseSchema(Schema):
    jobId = fields.String()
    status = fields.String()
    endpoint = fields.String()


class ResultSchema(Schema):
    video = fields.String()
    thumbnail = fields.String()
    captions = fields.String(allow_none=True)


class ProgressSchema(Schema):
    chunksDone = fields.Integer()
    chunksTotal = fields.Integer(allow_none=True)
    fraction = fields.Float()


class JobSchema(Schema):
    jobId = fields.String()
    endpoint = fields.String()
    status = fields.String(validate=validate.OneOf(["queued", "running", "completed", "failed"]))
    creditsCost = fields.Float(allow_none=True)
    durationMs = fields.Integer(allow_none=True)
    result = fields.Nested(ResultSchema, allow_none=True)
    error = fields.String(allow_none=True)
    metadata = fields.Raw(allow_none=True)
    createdAt = fields.String()
    completedAt = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    quality = fields.String()
    aspectRatio = fields.String()
    fps = fields.Integer()
    renderer = fields.String(allow_none=True)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    nextCursor = fields.String(allow_none=True)


class JobListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf(["queued", "running", "completed", "failed"]))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String()


class CreditsSchema(Schema):
    total = fields.Float()


class MeSchema(Schema):
    keyId = fields.String()
    keyPrefix = fields.String()
    name = fields.String()
    credits = fields.Nested(CreditsSchema)
    createdAt = fields.String()


class LogsSchema(Schema):
    jobId = fields.String()
    log = fields.String()
    truncated = fields.Boolean()


class ErrorSchema(Schema):
    error = fields.String(metadata={"description": "machine-readable code"})
    message = fields.String(metadata={"description": "for humans; names the field on 400"})

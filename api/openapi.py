"""The OpenAPI document, generated from the marshmallow schemas."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from api import schemas

_ERRORS = {
    "400": "Invalid request; the message names the field",
    "401": "Missing, malformed, unknown or revoked API key",
    "402": "Insufficient credits",
    "404": "No such job for this key's user",
    "409": "Idempotency-Key reused with a different body",
    "413": "Body over 200 KB",
    "429": "Request rate over the user's limit; see Retry-After",
}

_DESCRIPTION = """Kodisc v2 compatible render API of a self-hosted Manim farm.

Every request authenticates with `Authorization: Bearer <key>` (the scheme name in any case).
A key belongs to a user; all of a user's keys see the same jobs and spend the same credits.
Unknown request fields are ignored. Every non-2xx answer is `{"error": code, "message": text}`.

## Webhooks

When a job ends (completed, or failed: cancels included) the farm POSTs the same JSON document
as `GET /api/v2/render/{jobId}` to the job's `webhookUrl` (https only), or else to the key's
default webhook URL; `"webhookUrl": null` opts a job out. Headers (Kodisc's names; the farm's
`farm-event` and `farm-signature` carry the same values):

* `content-type: application/json`
* `kodisc-event: completed` or `kodisc-event: failed`
* `kodisc-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, keyed with the
  key's webhook secret (`whsec_...`, shown once when the key is created).

Verify the signature over the raw body bytes and reject timestamps older than 5 minutes.
A delivery succeeds on a 2xx within 10 s; otherwise it is retried 30 s, 5 min and 30 min after
the first try. Redirects are not followed; private, loopback and link-local addresses are refused.

## Credits and limits

A submit reserves the quality's minimum credits (402 `insufficient_credits` when the user can't
cover it); completion settles the real cost, drawing on the month's free allowance first, then
paid credits. Requests are rate limited per user (429 with `Retry-After`; every authenticated
answer carries `RateLimit-Limit` and `RateLimit-Remaining`). A user's jobs beyond their
concurrency limit are accepted and wait `queued`; `GET /api/v2/me` shows the limits.
`Idempotency-Key` makes a retried submit return the same job (409 when the key is reused with a
different body).

## Extensions to Kodisc's API

`fps` up to 120; `metadata` at most 32 levels deep and 16 KiB; `GET /api/v2/render` (list),
`DELETE /api/v2/render/{jobId}` (cancel), `GET /api/v2/render/{jobId}/logs`; the job fields
`progress`, `quality`, `aspectRatio`, `fps`, `renderer`; `/me` fields `name`, `createdAt`,
`limits`; the `Idempotency-Key` header.
"""


def _errors(*codes: str) -> dict[str, Any]:
    return {
        c: {
            "description": _ERRORS[c],
            "content": {"application/json": {"schema": "Error"}},
            **({"headers": {"Retry-After": {"schema": {"type": "integer"}}}} if c == "429" else {}),
        }
        for c in codes
    }


def _ok(schema: str, description: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


@cache
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="manim-render-farm",
        version="2.0.0",
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": _DESCRIPTION},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name in ("RenderRequest", "SubmitResponse", "Job", "JobList", "Me", "Logs", "Error"):
        spec.components.schema(name, schema=getattr(schemas, f"{name}Schema"))
    job_id = {"name": "jobId", "in": "path", "required": True, "schema": {"type": "string"}}
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    spec.path(
        path="/api/v2/render",
        operations={
            "post": {
                "summary": "Submit a render",
                "security": auth,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": "RenderRequest"}},
                },
                "responses": {
                    **_ok("SubmitResponse", "Queued", "202"),
                    **_errors("400", "401", "402", "409", "413", "429"),
                },
            },
            "get": {
                "summary": "List the caller's jobs, newest first",
                "security": auth,
                "parameters": [{"in": "query", "schema": schemas.JobListQuerySchema}],
                "responses": {**_ok("JobList", "A page of jobs"), **_errors("400", "401", "429")},
            },
        },
    )
    spec.path(
        path="/api/v2/render/{jobId}",
        operations={
            "get": {
                "summary": "A job's status and result",
                "security": auth,
                "parameters": [job_id],
                "responses": {**_ok("Job", "The job"), **_errors("401", "404", "429")},
            },
            "delete": {
                "summary": "Cancel a job",
                "security": auth,
                "parameters": [job_id],
                "responses": {
                    **_ok("Job", "The job, failed with error canceled"),
                    **_errors("401", "404", "429"),
                },
            },
        },
    )
    spec.path(
        path="/api/v2/render/{jobId}/logs",
        operations={
            "get": {
                "summary": "The job's render log",
                "security": auth,
                "parameters": [job_id],
                "responses": {**_ok("Logs", "The log"), **_errors("401", "404", "429")},
            },
        },
    )
    spec.path(
        path="/api/v2/me",
        operations={
            "get": {
                "summary": "The calling key",
                "security": auth,
                "responses": {**_ok("Me", "The key"), **_errors("401", "429")},
            },
        },
    )
    return spec.to_dict()

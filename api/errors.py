"""The one error path: every non-2xx response is ``{"error": code, "message": text}``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from farm import metrics
from farm.errors import FarmError, RateLimited

log = logging.getLogger("farm.api")


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    if 400 <= status < 500:
        metrics.HTTP_CLIENT_ERRORS.labels(code=code).inc()
    return response


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        for name, inner in messages.items():
            out.extend(_flatten(inner, f"{prefix}{name}." if prefix or name != "_schema" else ""))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        field = prefix.rstrip(".") or "body"
        return [f"{field}: {m}" for m in messages]
    return [f"{prefix.rstrip('.')}: {messages}"]


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        return error_response(400, "validation_error", "; ".join(_flatten(exc.messages)))

    @app.errorhandler(FarmError)
    def _farm(exc: FarmError) -> Response:
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = {
            400: "bad_request",
            413: "payload_too_large",
            404: "not_found",
            405: "method_not_allowed",
            415: "unsupported_media_type",
        }.get(exc.code or 500, "http_error")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the farm logged it")

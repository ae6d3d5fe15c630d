"""The Flask front door: ``create_app(settings)`` builds one app with its services."""

from __future__ import annotations

import contextlib
import time

from flask import Flask, Response, current_app, g, request

from farm import metrics
from farm.captions import ensure_empty_captions
from farm.config import Settings, load_settings
from farm.logs import bind, configure_logging, unbind
from farm.services import Services, build_services
from workers.celery_app import configure as configure_celery
from workers.publish import Publisher

MAX_BODY_BYTES = 200 * 1024
_EXTENSION = "farm"


def get_services(app: Flask | None = None) -> Services:
    """The services of ``app`` (default: the app serving the current request)."""
    services = (app or current_app).extensions[_EXTENSION]
    assert isinstance(services, Services)
    return services


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """One app; pass ``services`` to share them, or they are built from ``settings``."""
    if services is None:
        settings = settings or load_settings()
        services = build_services(settings, Publisher(configure_celery(settings)), pool_size=8)
    configure_logging(services.settings, "api")
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[_EXTENSION] = services
    with contextlib.suppress(Exception):  # S3 away at start: /readyz says so; `farm migrate` too
        ensure_empty_captions(services.storage)

    from api.errors import register_error_handlers
    from api.views import bp

    register_error_handlers(app)
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()
        job_id = (request.view_args or {}).get("job_id")
        if job_id:  # every log line while serving a job's URL carries its id
            g.log_token = bind(job_id=job_id)

    @app.teardown_request
    def _unbind(_: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # bound in another context: nothing to undo
                unbind(token)

    @app.after_request
    def _limits(response: Response) -> Response:
        """Every authenticated answer shows the caller's request budget (IETF RateLimit draft
        names); a refusal says when to retry."""
        quota = g.get("quota")
        if quota is not None:
            response.headers["RateLimit-Limit"] = str(quota.limit)
            response.headers["RateLimit-Remaining"] = str(quota.remaining)
        if response.status_code in (429, 503) and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = "1" if response.status_code == 429 else "5"
        return response

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.HTTP_REQUESTS.labels(
            route=route, method=request.method, status=str(response.status_code)
        ).inc()
        started = g.get("started")
        if started is not None:
            metrics.HTTP_REQUEST_DURATION.labels(route=route, method=request.method).observe(
                time.perf_counter() - started
            )
        return response

    return app

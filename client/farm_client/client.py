"""Python SDK for the farm's v2 render API (and any Kodisc-compatible server).

Only ``requests`` is needed. Farm-only fields (``progress``, ``quality``, ...) are optional in the
typed results, so the same client works against Kodisc by changing the base URL and the key::

    client = Client("http://127.0.0.1:8000", "farm_live_...")
    job = client.wait(client.submit(Path("scene.py"), "Hello", quality="low").job_id)
    client.download(job, "out/")
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("completed", "failed")


# --- errors -----------------------------------------------------------------------------------


class FarmClientError(Exception):
    """Anything the SDK raises."""


class FarmApiError(FarmClientError):
    """The server answered ``{"error": code, "message": text}`` with a non-2xx status."""

    code = "api_error"

    def __init__(
        self, message: str, *, status: int, code: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.body = body

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"


class BadRequestError(FarmApiError):
    code = "bad_request"


class ValidationError(FarmApiError):
    code = "validation_error"


class UnauthorizedError(FarmApiError):
    code = "unauthorized"


class InsufficientCreditsError(FarmApiError):
    code = "insufficient_credits"


class NotFoundError(FarmApiError):
    code = "not_found"


class MethodNotAllowedError(FarmApiError):
    code = "method_not_allowed"


class ConflictError(FarmApiError):
    code = "conflict"


class PayloadTooLargeError(FarmApiError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(FarmApiError):
    code = "unsupported_media_type"


class RateLimitedError(FarmApiError):
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body)
        self.retry_after = retry_after


class ServerError(FarmApiError):
    """A 5xx that survived the retries."""

    code = "internal_error"


class FarmConnectionError(FarmClientError):
    """The server could not be reached (after the retries)."""


class WaitTimeout(FarmClientError, TimeoutError):
    """``Client.wait`` gave up before the job ended; ``.job`` is the last state seen."""

    def __init__(self, message: str, job: Job | None) -> None:
        super().__init__(message)
        self.job = job


ERRORS: dict[str, type[FarmApiError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        ValidationError,
        UnauthorizedError,
        InsufficientCreditsError,
        NotFoundError,
        MethodNotAllowedError,
        ConflictError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        RateLimitedError,
        ServerError,
    )
}
# A server that sends an unknown code (or none) still gets the right class by its status.
_BY_STATUS: dict[int, type[FarmApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    402: InsufficientCreditsError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitedError,
}


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff


def error_from_response(response: requests.Response) -> FarmApiError:
    """The typed exception for a non-2xx response."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = (response.text or response.reason or "").strip()[:500] or "HTTP error"
    cls = ERRORS.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = (
            ServerError
            if response.status_code >= 500
            else _BY_STATUS.get(response.status_code, FarmApiError)
        )
    code_s = code if isinstance(code, str) else None
    if cls is RateLimitedError:
        return RateLimitedError(
            message,
            status=response.status_code,
            code=code_s,
            body=body,
            retry_after=_retry_after(response),
        )
    return cls(message, status=response.status_code, code=code_s, body=body)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    job_id: str
    status: str
    endpoint: str | None = None


@dataclass(frozen=True)
class Result:
    video: str
    thumbnail: str | None = None
    captions: str | None = None


@dataclass(frozen=True)
class Progress:
    """Farm extension: chunks rendered out of the plan; ``fraction`` counts the stitch too."""

    chunks_done: int
    chunks_total: int | None
    fraction: float


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Job:
    """A job as ``GET /api/v2/render/{jobId}`` shows it. Only ``job_id`` and ``status`` are
    guaranteed; everything else is ``None`` when the server does not send it."""

    job_id: str
    status: str
    endpoint: str | None = None
    credits_cost: float | None = None
    duration_ms: int | None = None
    result: Result | None = None
    error: str | None = None
    metadata: Any = None
    created_at: str | None = None
    completed_at: str | None = None
    progress: Progress | None = None
    quality: str | None = None
    aspect_ratio: str | None = None
    fps: int | None = None
    renderer: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Job:
        result = None
        res = doc.get("result")
        if isinstance(res, Mapping) and isinstance(res.get("video"), str):
            result = Result(
                res["video"], _opt_str(res.get("thumbnail")), _opt_str(res.get("captions"))
            )
        progress = None
        prog = doc.get("progress")
        if isinstance(prog, Mapping):
            progress = Progress(
                _opt_int(prog.get("chunksDone")) or 0,
                _opt_int(prog.get("chunksTotal")),
                _opt_float(prog.get("fraction")) or 0.0,
            )
        return cls(
            job_id=str(doc.get("jobId") or doc.get("id") or ""),
            status=str(doc.get("status") or "unknown"),
            endpoint=_opt_str(doc.get("endpoint")),
            credits_cost=_opt_float(doc.get("creditsCost")),
            duration_ms=_opt_int(doc.get("durationMs")),
            result=result,
            error=_opt_str(doc.get("error")),
            metadata=doc.get("metadata"),
            created_at=_opt_str(doc.get("createdAt")),
            completed_at=_opt_str(doc.get("completedAt")),
            progress=progress,
            quality=_opt_str(doc.get("quality")),
            aspect_ratio=_opt_str(doc.get("aspectRatio")),
            fps=_opt_int(doc.get("fps")),
            renderer=_opt_str(doc.get("renderer")),
            raw=dict(doc),
        )


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Logs:
    job_id: str
    log: str
    truncated: bool


@dataclass(frozen=True)
class Account:
    key_id: str | None
    key_prefix: str | None
    name: str | None
    credits: float | None
    created_at: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Downloaded:
    video: Path
    thumbnail: Path | None
    captions: Path | None


# --- the client -------------------------------------------------------------------------------


class Client:
    """A small synchronous client. Retries 5xx answers and connection errors (exponential
    backoff with jitter, ``max_retries`` times); every other error raises its typed exception
    at once. Submissions carry an ``Idempotency-Key`` (generated when not given), so a retried
    POST cannot queue the job twice."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.session = session or requests.Session()
        self._sleep: Callable[[float], None] = time.sleep  # tests may replace it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """``FARM_API_URL`` (default http://127.0.0.1:8000) and ``FARM_API_KEY``."""
        env = os.environ if environ is None else environ
        return cls(env.get("FARM_API_URL") or DEFAULT_URL, env.get("FARM_API_KEY"), **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --

    def _delay(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt) * (0.5 + random.random() / 2))

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        url = self.base_url + path
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            try:
                response = self.session.request(
                    method, url, json=json, params=params, headers=all_headers, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.max_retries:
                    raise FarmConnectionError(f"{method} {url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise FarmApiError(
                            f"not JSON: {response.text[:200]!r}", status=response.status_code
                        ) from exc
                if response.status_code < 500 or attempt >= self.max_retries:
                    raise error_from_response(response)
            self._sleep(self._delay(attempt))
            attempt += 1

    # -- API --

    def submit(
        self,
        source: str | os.PathLike[str],
        class_name: str,
        *,
        quality: str | None = None,
        aspect_ratio: str | None = None,
        fps: int | None = None,
        metadata: Any = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Queue a render. ``source`` is the scene's code (``str``) or a file (a ``Path``)."""
        code = Path(source).read_text() if isinstance(source, os.PathLike) else source
        body: dict[str, Any] = {"code": code, "className": class_name}
        if quality is not None:
            body["quality"] = quality
        if aspect_ratio is not None:
            body["aspectRatio"] = aspect_ratio
        if fps is not None:
            body["fps"] = fps
        if metadata is not None:
            body["metadata"] = metadata
        if webhook_url is not None:
            body["webhookUrl"] = webhook_url
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        doc = self._request("POST", "/api/v2/render", json=body, headers={"Idempotency-Key": key})
        return Submission(
            str(doc["jobId"]), str(doc.get("status") or "queued"), _opt_str(doc.get("endpoint"))
        )

    def get(self, job_id: str) -> Job:
        return Job.from_dict(self._request("GET", f"/api/v2/render/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (it ends ``failed`` with error ``canceled``); an ended job is returned
        as it is."""
        return Job.from_dict(self._request("DELETE", f"/api/v2/render/{job_id}"))

    def logs(self, job_id: str) -> Logs:
        """Farm extension: the render log (plan, chunks) of a job."""
        doc = self._request("GET", f"/api/v2/render/{job_id}/logs")
        return Logs(
            str(doc.get("jobId") or job_id), str(doc.get("log") or ""), bool(doc.get("truncated"))
        )

    def list(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage:
        """One page of the key's jobs, newest first; pass ``next_cursor`` for the next."""
        params = {
            k: v
            for k, v in (("status", status), ("limit", limit), ("cursor", cursor))
            if v is not None
        }
        doc = self._request("GET", "/api/v2/render", params=params)
        return JobPage(
            [Job.from_dict(j) for j in doc.get("jobs") or []], _opt_str(doc.get("nextCursor"))
        )

    def iter_jobs(self, *, status: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job of the key, newest first, following the cursors."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def me(self) -> Account:
        doc = self._request("GET", "/api/v2/me")
        credits = doc.get("credits")
        total = credits.get("total") if isinstance(credits, Mapping) else credits
        return Account(
            _opt_str(doc.get("keyId")),
            _opt_str(doc.get("keyPrefix")),
            _opt_str(doc.get("name")),
            _opt_float(total),
            _opt_str(doc.get("createdAt")),
            dict(doc),
        )

    def wait(
        self,
        job_id: str,
        timeout: float | None = 600.0,
        on_progress: Callable[[Job], None] | None = None,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
    ) -> Job:
        """Poll until the job ends and return it (completed or failed: check ``.failed``).

        The interval grows by half each poll that shows no change, up to ``max_interval``, and
        falls back to ``poll_interval`` when something moved; a 429 waits its Retry-After.
        ``on_progress`` gets every state seen. Raises ``WaitTimeout`` after ``timeout`` s."""
        started = time.monotonic()
        interval = poll_interval
        last: Job | None = None
        while True:
            try:
                job = self.get(job_id)
            except RateLimitedError as exc:
                pause = exc.retry_after if exc.retry_after is not None else interval
            else:
                if on_progress is not None:
                    on_progress(job)
                if job.done:
                    return job
                moved = last is None or (job.status, job.progress) != (last.status, last.progress)
                interval = poll_interval if moved else min(max_interval, interval * 1.5)
                pause = interval
                last = job
            if timeout is not None:
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise WaitTimeout(
                        f"job {job_id} still {last.status if last else '?'} after {timeout:g} s",
                        last,
                    )
                pause = min(pause, left)
            self._sleep(pause)

    def download(self, job: str | Job, directory: str | os.PathLike[str]) -> Downloaded:
        """Save the video, thumbnail and captions of a completed job into ``directory`` as
        ``<jobId>.mp4``, ``<jobId>.jpg``, ``<jobId>.vtt`` (the extension follows the URL)."""
        if isinstance(job, str):
            job = self.get(job)
        if job.result is None:
            raise FarmClientError(f"job {job.job_id} has no result (status {job.status})")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        video = self._fetch(job.result.video, out, job.job_id, ".mp4")
        thumb = (
            self._fetch(job.result.thumbnail, out, job.job_id, ".jpg")
            if job.result.thumbnail
            else None
        )
        captions = (
            self._fetch(job.result.captions, out, job.job_id, ".vtt")
            if job.result.captions
            else None
        )
        return Downloaded(video, thumb, captions)

    def _fetch(self, url: str, out: Path, stem: str, default_ext: str) -> Path:
        """Stream a result URL (presigned: no Authorization header) to a file, atomically."""
        ext = os.path.splitext(urlsplit(url).path)[1] or default_ext
        target = out / f"{stem}{ext}"
        partial = target.with_name(target.name + ".part")
        attempt = 0
        while True:
            try:
                with self.session.get(url, stream=True, timeout=self.timeout) as response:
                    if response.status_code >= 400:
                        if response.status_code < 500 or attempt >= self.max_retries:
                            raise FarmApiError(
                                f"download of {target.name} failed: HTTP {response.status_code}",
                                status=response.status_code,
                                code="download_failed",
                            )
                    else:
                        with open(partial, "wb") as handle:
                            for block in response.iter_content(1 << 16):
                                handle.write(block)
                        os.replace(partial, target)
                        return target
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.max_retries:
                    raise FarmConnectionError(f"GET {target.name}: {exc}") from exc
            self._sleep(self._delay(attempt))
            attempt += 1

"""The client commands: ``render``, ``status``, ``logs``, ``jobs``, ``cancel``.

Installed alone they are ``farm-client <command>``; next to the server they are also ``farm
<command>`` (registered through the ``farm.commands`` entry point group). They talk HTTP to a
farm (or any Kodisc-compatible server) through ``farm_client.client``; the URL and
key come from ``--url``/``--key`` or ``FARM_API_URL``/``FARM_API_KEY``. Server settings are not
used. Exit codes: 0 done, 1 the job failed (its error on stderr), 2 an API or connection error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from farm_client.client import DEFAULT_URL, Client, FarmClientError, Job, WaitTimeout

# The server's choices (farm.presets); tests/test_client.py checks that they agree.
QUALITIES = ("low", "medium", "high", "twok", "fourk")
ASPECT_RATIOS = ("16:9", "9:16")

EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("FARM_API_URL") or DEFAULT_URL
    key = args.key or os.environ.get("FARM_API_KEY")
    if not key:
        raise FarmClientError("no API key: pass --key or set FARM_API_KEY")
    return Client(url, key)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """One status line on a terminal (redrawn in place); one line per change elsewhere."""

    WIDTH = 24

    def __init__(self, stream: TextIO, started: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic() if started is None else started
        self.running_since: float | None = None
        self.last_line = ""

    def line(self, job: Job, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        if job.status == "running" and self.running_since is None:
            self.running_since = now
        parts = [f"{job.status:<9}"]
        progress = job.progress
        if progress is not None:
            fraction = min(1.0, max(0.0, progress.fraction))
            filled = round(fraction * self.WIDTH)
            parts.append("[" + "#" * filled + "-" * (self.WIDTH - filled) + "]")
            total = "?" if progress.chunks_total is None else str(progress.chunks_total)
            parts.append(f"{progress.chunks_done}/{total} chunks {fraction * 100:3.0f}%")
        parts.append(f"elapsed {_clock(elapsed)}")
        if (
            progress is not None
            and not job.done
            and self.running_since is not None
            and 0 < progress.fraction < 1
        ):
            ran = now - self.running_since
            parts.append(f"ETA {_clock(ran * (1 - progress.fraction) / progress.fraction)}")
        return "  ".join(parts)

    def update(self, job: Job) -> None:
        text = self.line(job)
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self.last_line)))
            self.stream.flush()
        elif text.split("elapsed")[0] != self.last_line.split("elapsed")[0]:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last_line = text

    def finish(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()
        self.last_line = ""


def _ask_cancel(client: Client, job_id: str) -> int:
    sys.stderr.write(f"\ninterrupted: cancel job {job_id}? [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline().strip().lower()
    except (KeyboardInterrupt, EOFError):
        answer = ""
    if answer in ("y", "yes"):
        job = client.cancel(job_id)
        print(f"job {job_id} canceled ({job.status}: {job.error})", file=sys.stderr)
    else:
        print(f"job {job_id} keeps running; see `farm status {job_id}`", file=sys.stderr)
    return EXIT_INTERRUPTED


def _print_failure(client: Client, job: Job) -> None:
    print(f"job {job.job_id} failed: {job.error or 'no error message'}", file=sys.stderr)
    if job.error == "canceled":
        return
    try:
        log = client.logs(job.job_id).log.strip().splitlines()
    except FarmClientError:
        return  # no /logs on this server (Kodisc): the error above is all there is
    if log:
        print(
            "--- last lines of the render log (farm logs " + job.job_id + ") ---", file=sys.stderr
        )
        print("\n".join(log[-15:]), file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    client = _client(args)
    metadata = json.loads(args.metadata) if args.metadata else None
    submitted = client.submit(
        Path(args.scene),
        args.class_name,
        quality=args.quality,
        aspect_ratio=args.aspect,
        fps=args.fps,
        metadata=metadata,
        webhook_url=args.webhook_url,
    )
    print(f"submitted {submitted.job_id} ({submitted.status})", file=sys.stderr)
    if not (args.wait or args.output):
        print(submitted.job_id)
        return 0
    bar = ProgressBar(sys.stderr)
    try:
        job = client.wait(submitted.job_id, timeout=args.timeout, on_progress=bar.update)
    except KeyboardInterrupt:
        bar.finish()
        return _ask_cancel(client, submitted.job_id)
    except WaitTimeout as exc:
        bar.finish()
        print(f"{exc}; it keeps running: `farm status {submitted.job_id}`", file=sys.stderr)
        return EXIT_FAILED
    bar.finish()
    if job.failed:
        _print_failure(client, job)
        return EXIT_FAILED
    if args.output:
        files = client.download(job, args.output)
        for path in (files.video, files.thumbnail, files.captions):
            if path is not None:
                print(path)
    else:
        print(job.result.video if job.result else job.job_id)
    return 0


def _job_json(job: Job) -> str:
    return json.dumps(dict(job.raw), indent=2)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get(args.job_id)
    if args.json:
        print(_job_json(job))
    else:
        print(f"job:       {job.job_id}\nstatus:    {job.status}")
        if job.progress is not None:
            total = job.progress.chunks_total if job.progress.chunks_total is not None else "?"
            print(
                f"progress:  {job.progress.chunks_done}/{total} chunks "
                f"({job.progress.fraction * 100:.0f}%)"
            )
        for label, value in (
            ("quality", job.quality),
            ("aspect", job.aspect_ratio),
            ("created", job.created_at),
            ("completed", job.completed_at),
            ("credits", job.credits_cost),
            ("error", job.error),
        ):
            if value is not None:
                print(f"{label + ':':<10} {value}")
        if job.result is not None:
            print(f"video:     {job.result.video}")
    if job.failed:
        if not args.json:
            print(f"job {job.job_id} failed: {job.error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    logs = _client(args).logs(args.job_id)
    sys.stdout.write(logs.log if logs.log.endswith("\n") or not logs.log else logs.log + "\n")
    if logs.truncated:
        print("(log truncated)", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    print(f"{job.job_id} {job.status} {job.error or ''}".rstrip())
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    page = _client(args).list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        print(
            json.dumps(
                {"jobs": [dict(j.raw) for j in page.jobs], "nextCursor": page.next_cursor}, indent=2
            )
        )
        return 0
    rows = [("JOB", "STATUS", "QUALITY", "PROGRESS", "CREATED", "ERROR")]
    for job in page.jobs:
        progress = ""
        if job.progress is not None:
            progress = f"{job.progress.fraction * 100:.0f}%"
        error = (job.error or "").splitlines()[0][:50] if job.error else ""
        rows.append(
            (
                job.job_id,
                job.status,
                job.quality or "",
                progress,
                (job.created_at or "")[:19].replace("T", " "),
                error,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.next_cursor:
        print(f"(more: farm jobs --cursor {page.next_cursor})", file=sys.stderr)
    return 0


def _run(func: Any) -> Any:
    """Turn SDK errors into exit 2 and Ctrl-C into 130."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except FarmClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"API base URL (default FARM_API_URL or {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default FARM_API_KEY)")


def register(sub: Any) -> None:
    """The ``farm.commands`` entry point: the client commands on ``farm``'s subparsers."""
    p = sub.add_parser("render", help="submit a scene; with --wait show progress and download")
    _common(p)
    p.add_argument("scene", help="the scene's Python file")
    p.add_argument("class_name", metavar="SceneName", help="the Scene class to render")
    p.add_argument("-q", "--quality", choices=list(QUALITIES))
    p.add_argument("--aspect", choices=list(ASPECT_RATIOS), help="aspect ratio")
    p.add_argument("--fps", type=int)
    p.add_argument("--metadata", help="JSON passed through to the job")
    p.add_argument("--webhook-url")
    p.add_argument("--wait", action="store_true", help="wait for the job and show progress")
    p.add_argument("-o", "--output", help="download the results into this folder (implies --wait)")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after N seconds")
    p.set_defaults(func=_run(cmd_render))

    p = sub.add_parser("status", help="a job's status (exit 1 when it failed)")
    _common(p)
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_status))

    p = sub.add_parser("logs", help="a job's render log")
    _common(p)
    p.add_argument("job_id", metavar="JOB")
    p.set_defaults(func=_run(cmd_logs))

    p = sub.add_parser("cancel", help="cancel a job")
    _common(p)
    p.add_argument("job_id", metavar="JOB")
    p.set_defaults(func=_run(cmd_cancel))

    p = sub.add_parser("jobs", help="recent jobs as a table")
    _common(p)
    p.add_argument("--status", choices=["queued", "running", "completed", "failed"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_jobs))


def main(argv: Sequence[str] | None = None) -> int:
    """``farm-client``: the client commands without the server installed."""
    parser = argparse.ArgumentParser(prog="farm-client", description="manim render farm client")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

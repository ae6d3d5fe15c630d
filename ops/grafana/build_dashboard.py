"""Generate ops/grafana/farm-dashboard.json (Grafana dashboard JSON model).

Run `python ops/grafana/build_dashboard.py` after editing; tests check the committed JSON
equals this script's output. Panels reference a `datasource` template variable, so the file
works both through "Import dashboard" and through file provisioning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("farm-dashboard.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
Q = 'quality=~"$quality"'
RI = "$__rate_interval"

Panel = dict[str, Any]


class _Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def row(layout: _Layout, title: str) -> Panel:
    layout.x, layout.y, layout.row_h = 0, layout.y + layout.row_h, 0
    panel = {
        "collapsed": False,
        "gridPos": layout.place(24, 1),
        "id": layout.new_id(),
        "panels": [],
        "title": title,
        "type": "row",
    }
    return panel


def timeseries(
    layout: _Layout,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    **defaults: Any,
) -> Panel:
    custom: dict[str, Any] = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": {"custom": custom, "unit": unit, **defaults}, "overrides": []},
        "gridPos": layout.place(w, h),
        "id": layout.new_id(),
        "options": {
            "legend": {"calcs": ["mean", "max"], "displayMode": "table", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "title": title,
        "type": "timeseries",
    }


def stat(
    layout: _Layout,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    w: int = 6,
    h: int = 4,
    **defaults: Any,
) -> Panel:
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "gridPos": layout.place(w, h),
        "id": layout.new_id(),
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": targets,
        "title": title,
        "type": "stat",
    }


def heatmap(
    layout: _Layout, title: str, description: str, expr: str, w: int = 12, h: int = 8
) -> Panel:
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "gridPos": layout.place(w, h),
        "id": layout.new_id(),
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "yAxis": {"unit": "s"},
            "tooltip": {"show": True, "yHistogram": True},
        },
        "targets": [_target(expr, "{{le}}", "A", format="heatmap", interval="1m")],
        "title": title,
        "type": "heatmap",
    }


def _quantiles(metric: str, by: str, selector: str = Q) -> list[dict[str, Any]]:
    pairs = []
    for q in ("0.5", "0.95"):
        expr = (
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RI}])))"
        )
        pairs.append((expr, f"p{int(float(q) * 100)} {{{{{by}}}}}"))
    return _targets(*pairs)


def percent_thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def build() -> dict[str, Any]:
    """The dashboard as a JSON-serialisable dict."""
    lay = _Layout()
    bad = f'{Q}, kind!~"canceled|insufficient_credits"'
    panels: list[Panel] = [
        row(lay, "Jobs"),
        timeseries(
            lay,
            "Job throughput by quality",
            "Jobs submitted and completed per second.",
            _targets(
                (
                    f"sum by (quality) (rate(farm_jobs_completed_total{{{Q}}}[{RI}]))",
                    "completed {{quality}}",
                ),
                (
                    f"sum by (quality) (rate(farm_jobs_submitted_total{{{Q}}}[{RI}]))",
                    "submitted {{quality}}",
                ),
            ),
            unit="reqps",
        ),
        timeseries(
            lay,
            "Job failures by quality and kind",
            "Jobs reaching a terminal failure per second, by error kind.",
            _targets(
                (
                    f"sum by (quality, kind) (rate(farm_jobs_failed_total{{{Q}}}[{RI}]))",
                    "{{quality}} {{kind}}",
                )
            ),
            unit="reqps",
            stack=True,
        ),
        timeseries(
            lay,
            "Job failure ratio",
            "failed / (completed + failed), ignoring canceled and insufficient_credits; "
            "alert threshold 20%.",
            _targets(
                (
                    f"sum by (quality) (increase(farm_jobs_failed_total{{{bad}}}[15m]))"
                    f" / (sum by (quality) (increase(farm_jobs_completed_total{{{Q}}}[15m]))"
                    f" + sum by (quality) (increase(farm_jobs_failed_total{{{bad}}}[15m])))",
                    "{{quality}}",
                )
            ),
            unit="percentunit",
            min=0,
            max=1,
        ),
        timeseries(
            lay,
            "Job latency p50 / p95 (submit to terminal)",
            "histogram_quantile over farm_job_duration_seconds.",
            _quantiles("farm_job_duration_seconds", "quality"),
            unit="s",
        ),
        row(lay, "Queues"),
        timeseries(
            lay,
            "Queue depth",
            "Messages waiting per Celery queue (from the scheduler).",
            _targets(("max by (queue) (farm_queue_depth)", "{{queue}}")),
            w=8,
        ),
        timeseries(
            lay,
            "Oldest queued job age",
            "Age of the oldest queued job per quality tier (queue render.<quality>).",
            _targets(
                (f"max by (quality) (farm_queue_oldest_job_age_seconds{{{Q}}})", "{{quality}}")
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            lay,
            "Queue consumers",
            "Workers heartbeating on each queue; 0 with depth > 0 means stuck jobs.",
            _targets(("max by (queue) (farm_queue_consumers)", "{{queue}}")),
            w=8,
        ),
        row(lay, "Workers"),
        stat(
            lay,
            "Worker utilisation",
            "Chunks in flight / concurrency slots across all workers.",
            _targets(
                (
                    "sum(farm_chunks_in_flight) / sum(max by (instance) (farm_worker_slots))",
                    "utilisation",
                )
            ),
            unit="percentunit",
            min=0,
            max=1,
            thresholds=percent_thresholds((None, "green"), (0.8, "orange"), (0.95, "red")),
        ),
        timeseries(
            lay,
            "Worker utilisation per worker",
            "Chunks in flight / slots, per worker instance.",
            _targets(
                (
                    "sum by (instance) (farm_chunks_in_flight)"
                    " / max by (instance) (farm_worker_slots)",
                    "{{instance}}",
                )
            ),
            unit="percentunit",
            w=18,
            h=4,
            min=0,
            max=1,
        ),
        heatmap(
            lay,
            "Chunk render time distribution",
            "Successful chunk render wall time (farm_chunk_render_seconds buckets).",
            f"sum by (le) (increase(farm_chunk_render_seconds_bucket{{{Q}}}[{RI}]))",
        ),
        timeseries(
            lay,
            "Chunk render time p50 / p95",
            "Per quality.",
            _quantiles("farm_chunk_render_seconds", "quality"),
            unit="s",
        ),
        timeseries(
            lay,
            "Frames per second",
            "Frames rendered per second across the farm.",
            _targets(
                (f"sum by (quality) (rate(farm_frames_rendered_total{{{Q}}}[{RI}]))", "{{quality}}")
            ),
            unit="short",
            stack=True,
        ),
        timeseries(
            lay,
            "Chunks rendered / failed",
            "Per queue; failures by kind.",
            _targets(
                (f"sum by (queue) (rate(farm_chunks_rendered_total[{RI}]))", "ok {{queue}}"),
                (
                    f"sum by (queue, kind) (rate(farm_chunks_failed_total[{RI}]))",
                    "failed {{queue}} {{kind}}",
                ),
            ),
            unit="reqps",
        ),
        timeseries(
            lay,
            "Stitch and plan time p95",
            "Per quality.",
            _targets(
                (
                    "histogram_quantile(0.95, sum by (quality, le) "
                    f"(rate(farm_stitch_seconds_bucket{{{Q}}}[{RI}])))",
                    "stitch {{quality}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (quality, le) "
                    f"(rate(farm_plan_seconds_bucket{{{Q}}}[{RI}])))",
                    "plan {{quality}}",
                ),
            ),
            unit="s",
        ),
        timeseries(
            lay,
            "Retries and reaped chunks",
            "Celery task retries per task; chunks re-queued by the reaper per kind.",
            _targets(
                (f"sum by (task) (rate(farm_task_retries_total[{RI}]))", "retry {{task}}"),
                (
                    f"sum by (kind) (rate(farm_reaper_requeued_total[{RI}]))",
                    "reaped {{kind}}",
                ),
            ),
            unit="reqps",
        ),
        row(lay, "Webhooks and credits"),
        stat(
            lay,
            "Webhook success rate",
            "Share of webhook attempts that succeeded over the dashboard range.",
            _targets(
                (
                    'sum(increase(farm_webhook_attempts_total{outcome="success"}[$__range]))'
                    " / sum(increase(farm_webhook_attempts_total[$__range]))",
                    "success",
                )
            ),
            unit="percentunit",
            min=0,
            max=1,
            h=8,
            thresholds=percent_thresholds((None, "red"), (0.5, "orange"), (0.95, "green")),
        ),
        timeseries(
            lay,
            "Webhook attempts by outcome",
            "success | http_error | timeout | connect_error | refused.",
            _targets(
                (f"sum by (outcome) (rate(farm_webhook_attempts_total[{RI}]))", "{{outcome}}")
            ),
            unit="reqps",
            w=10,
            stack=True,
        ),
        stat(
            lay,
            "Credits settled",
            "Credits charged over the dashboard range.",
            _targets(
                (f"sum(increase(farm_credits_settled_total{{{Q}}}[$__range]))", "credits"),
            ),
            unit="short",
            w=8,
            h=8,
        ),
        timeseries(
            lay,
            "Credits settled by quality",
            "Credits charged per minute.",
            _targets(
                (
                    f"sum by (quality) (rate(farm_credits_settled_total{{{Q}}}[{RI}])) * 60",
                    "{{quality}}",
                )
            ),
            unit="short",
            w=24,
            stack=True,
        ),
        row(lay, "API"),
        timeseries(
            lay,
            "HTTP requests by status",
            "Requests per second by status code.",
            _targets((f"sum by (status) (rate(farm_http_requests_total[{RI}]))", "{{status}}")),
            unit="reqps",
            w=8,
            stack=True,
        ),
        timeseries(
            lay,
            "HTTP latency p95 by route",
            "Per route template.",
            _targets(
                (
                    "histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(farm_http_request_duration_seconds_bucket[{RI}])))",
                    "{{route}}",
                )
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            lay,
            "Client errors by code",
            "4xx responses by machine error code.",
            _targets((f"sum by (code) (rate(farm_http_client_errors_total[{RI}]))", "{{code}}")),
            unit="reqps",
            w=8,
            stack=True,
        ),
    ]
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Manim render farm: jobs, queues, workers, webhooks, credits, API.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["farm", "manim"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "label": "Data source",
                    "multi": False,
                    "name": "datasource",
                    "options": [],
                    "query": "prometheus",
                    "refresh": 1,
                    "regex": "",
                    "type": "datasource",
                },
                {
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "datasource": DS,
                    "definition": "label_values(farm_jobs_submitted_total, quality)",
                    "hide": 0,
                    "includeAll": True,
                    "label": "Quality",
                    "multi": True,
                    "name": "quality",
                    "options": [],
                    "query": {
                        "qryType": 1,
                        "query": "label_values(farm_jobs_submitted_total, quality)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "regex": "",
                    "sort": 1,
                    "type": "query",
                },
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Manim render farm",
        "uid": "farm-overview",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard file's exact text."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Write the JSON, or with --check exit 1 when the committed file is stale."""
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale; run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

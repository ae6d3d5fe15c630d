"""The shipped Prometheus/Grafana files agree with farm.metrics; multiprocess export works.

Fast and service-free: promtool (Debian's `prometheus` package) checks the rule and scrape
files, and real subprocesses write to one PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from farm import metrics

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "farm-dashboard.json"
DASHBOARD_SCRIPT = ROOT / "ops" / "grafana" / "build_dashboard.py"

# A metric name: farm_* anywhere (stricter than "followed by { [ ) or space"), or `up`
# used as a selector.
FARM_NAME = re.compile(r"\bfarm_[A-Za-z0-9_]+\b")
UP_NAME = re.compile(r"(?<![\w:$.])up(?=\s*[{\[)]|\s|$)")
# owner is bounded by the dispatcher: top-N owners, the rest as "other" (farm.dispatch);
# result is the animation cache's hit or miss.
BOUNDED_LABELS = {"route", "method", "status", "quality", "code", "queue", "kind", "task",
                  "outcome", "owner", "result"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    names = set(FARM_NAME.findall(expr))
    if UP_NAME.search(expr):
        names.add("up")
    return names


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus); CI is unset")
    return path


def run_promtool(promtool: str, *args: str | Path) -> None:
    proc = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- metric definitions -------------------------------------------------------------


def test_metric_names_follow_conventions() -> None:
    names = metrics.exported_metric_names()
    assert {
        "farm_jobs_submitted_total",
        "farm_job_duration_seconds_bucket",
        "farm_chunks_in_flight",
        "farm_worker_slots",
        "farm_queue_depth",
        "farm_queue_oldest_job_age_seconds",
    } <= names
    for metric in metrics.all_metrics():
        (family,) = metric.describe()
        assert re.fullmatch(r"farm_[a-z0-9_]+", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        # Unbounded labels (job ids, keys, URLs) would explode the series count.
        assert set(metric._labelnames) <= BOUNDED_LABELS, (family.name, metric._labelnames)


def test_every_module_metric_is_registered_in_all_metrics() -> None:
    kinds = (Counter, Gauge, Histogram)
    defined = [v for v in vars(metrics).values() if isinstance(v, kinds)]
    assert {id(m) for m in defined} == {id(m) for m in metrics.all_metrics()}


# --- Prometheus files --------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", ALERTS)


def test_promtool_check_config(promtool: str) -> None:
    run_promtool(promtool, "check", "config", PROM_CONFIG)


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alerts_name_only_exported_metrics_and_are_annotated() -> None:
    rules = load_rules()
    alerts = [r for r in rules if "alert" in r]
    recorded = {r["record"] for r in rules if "record" in r}
    assert len(alerts) >= 6
    exported = metrics.exported_metric_names() | {"up"}
    for alert in alerts:
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        assert names <= exported, (alert["alert"], names - exported)
        for used in re.findall(r"\bfarm:[A-Za-z0-9_:]+", alert["expr"]):
            assert used in recorded, (alert["alert"], used)
        assert {"summary", "description"} <= set(alert.get("annotations", {})), alert["alert"]
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, alert["alert"]


def test_scrape_config_targets() -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "farm-api": ["127.0.0.1:8000"],
        "farm-worker": ["127.0.0.1:9101"],
        "farm-scheduler": ["127.0.0.1:9102"],
    }


SCHED = 'job="farm-scheduler", instance="127.0.0.1:9102"'

# promtool unit tests of the alert expressions (labels, thresholds, `for`). Annotations
# are stripped from the copy under test so wording can change without touching this.
ALERT_UNIT_TESTS: list[dict[str, Any]] = [
    {  # per-quality SLO via on(quality): 400 s breaks low's 5 m, not fourk's 30 m
        "interval": "1m",
        "input_series": [
            {"series": f'farm_queue_oldest_job_age_seconds{{quality="low", {SCHED}}}',
             "values": "400x20"},
            {"series": f'farm_queue_oldest_job_age_seconds{{quality="fourk", {SCHED}}}',
             "values": "400x20"},
            {"series": f'up{{{SCHED}}}', "values": "1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "FarmOldestJobOverSLO",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "quality": "low"}}]},
            {"eval_time": "10m", "alertname": "FarmSchedulerDown", "exp_alerts": []},
        ],
    },
    {  # a queue with work but no consumer; an empty queue without consumer is fine
        "interval": "1m",
        "input_series": [
            {"series": f'farm_queue_consumers{{queue="render.low", {SCHED}}}', "values": "0x20"},
            {"series": f'farm_queue_depth{{queue="render.low", {SCHED}}}', "values": "3x20"},
            {"series": f'farm_queue_consumers{{queue="render.high", {SCHED}}}', "values": "0x20"},
            {"series": f'farm_queue_depth{{queue="render.high", {SCHED}}}', "values": "0x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "FarmQueueWithoutConsumer", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "FarmQueueWithoutConsumer",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "queue": "render.low"}}]},
            {"eval_time": "10m", "alertname": "FarmSchedulerDown",
             "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        ],
    },
    {  # backlog growing past the threshold for 10 minutes
        "interval": "1m",
        "input_series": [
            {"series": f'farm_queue_depth{{queue="render.fourk", {SCHED}}}',
             "values": "50+10x40"},
            {"series": f'farm_queue_depth{{queue="render.low", {SCHED}}}', "values": "500x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "FarmQueueBacklogGrowing",
             "exp_alerts": [{"exp_labels": {
                 "severity": "warning", "queue": "render.fourk", "job": "farm-scheduler",
                 "instance": "127.0.0.1:9102"}}]},
        ],
    },
    {  # failure ratio: high's 1/3 failing pages; low's cancellations do not count
        "interval": "1m",
        "input_series": [
            {"series": 'farm_jobs_completed_total{quality="high"}', "values": "0+2x40"},
            {"series": 'farm_jobs_failed_total{quality="high", kind="platform_error"}',
             "values": "0+1x40"},
            {"series": 'farm_jobs_completed_total{quality="low"}', "values": "0+1x40"},
            {"series": 'farm_jobs_failed_total{quality="low", kind="canceled"}',
             "values": "0+5x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "FarmJobFailureRatioHigh",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "quality": "high"}}]},
        ],
    },
    {  # webhooks: 3 of 4 attempts time out
        "interval": "1m",
        "input_series": [
            {"series": 'farm_webhook_attempts_total{outcome="success"}', "values": "0+1x40"},
            {"series": 'farm_webhook_attempts_total{outcome="timeout"}', "values": "0+3x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "FarmWebhookFailuresHigh",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    },
]  # fmt: skip


def test_alert_rules_fire_as_intended(promtool: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(doc))
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": ALERT_UNIT_TESTS}
        )
    )
    run_promtool(promtool, "test", "rules", unit)


# --- Grafana dashboard -------------------------------------------------------------


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", DASHBOARD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_is_the_scripts_output() -> None:
    assert DASHBOARD.read_text() == load_script().render(), "run ops/grafana/build_dashboard.py"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exported = metrics.exported_metric_names() | {"up"}
    used: set[str] = set()
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    assert len(panels) >= 8
    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    # The brief's panels: throughput, failures, latency, queues, utilisation, render time,
    # webhooks, frames, credits.
    assert {
        "farm_jobs_completed_total",
        "farm_jobs_failed_total",
        "farm_job_duration_seconds_bucket",
        "farm_queue_depth",
        "farm_queue_oldest_job_age_seconds",
        "farm_chunks_in_flight",
        "farm_worker_slots",
        "farm_chunk_render_seconds_bucket",
        "farm_webhook_attempts_total",
        "farm_frames_rendered_total",
        "farm_credits_settled_total",
    } <= used


# --- multiprocess exposition -------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os
    import sys
    from farm import metrics
    metrics.JOBS_SUBMITTED.labels(quality="low").inc()
    metrics.CHUNKS_IN_FLIGHT.inc(int(sys.argv[1]))
    metrics.CHUNK_RENDER_SECONDS.labels(quality="low").observe(3.0)
    print(os.getpid())
    """
)


def scrape(app: metrics.WSGIApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_app_sums_processes_sharing_a_multiproc_dir(tmp_path: Path) -> None:
    # Given two real processes (like two gunicorn workers) writing to one directory
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", CHILD, in_flight],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        for in_flight in ("1", "2")
    ]
    # When the exposition app reads the directory
    samples = scrape(metrics.metrics_app(str(tmp_path)))
    # Then it reports the sum, not one process's fragment
    low = (("quality", "low"),)
    assert samples[("farm_jobs_submitted_total", low)] == 2
    assert samples[("farm_chunk_render_seconds_count", low)] == 2
    assert samples[("farm_chunk_render_seconds_bucket", (("le", "5.0"), *low))] == 2
    assert samples[("farm_chunks_in_flight", ())] == 3
    # And a dead process's live gauge drops out once marked dead, its counters stay
    metrics.mark_process_dead(pids[0], {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    samples = scrape(metrics.metrics_app(str(tmp_path)))
    assert samples[("farm_chunks_in_flight", ())] == 2
    assert samples[("farm_jobs_submitted_total", low)] == 2


def test_render_latest_reads_the_dir_from_the_given_environ(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", CHILD, "1"], env=env, timeout=60, check=True,
                   capture_output=True)  # fmt: skip
    body, content_type = metrics.render_latest({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert content_type.startswith("text/plain")
    assert 'farm_jobs_submitted_total{quality="low"} 1.0' in body.decode()


def test_metrics_app_without_dir_serves_default_registry() -> None:
    child = metrics.TASK_RETRIES.labels(task="render_chunk")
    before = scrape(metrics.metrics_app(None)).get(
        ("farm_task_retries_total", (("task", "render_chunk"),)), 0.0
    )
    child.inc()
    after = scrape(metrics.metrics_app(None))[
        ("farm_task_retries_total", (("task", "render_chunk"),))
    ]
    assert after == before + 1


def test_mark_process_dead_without_dir_is_a_no_op() -> None:
    metrics.mark_process_dead(12345, {})

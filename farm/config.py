"""The farm's one settings object, read from ``FARM_*`` environment variables by a function."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


class SettingsError(ValueError):
    """A ``FARM_*`` variable holds a value the farm cannot use."""


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None


def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Everything a farm process needs to know; built once at start-up by ``load_settings``."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/farm"
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint: str = "127.0.0.1:8333"
    s3_access_key: str = "farm"
    s3_secret_key: str = "farm-secret-key"
    s3_bucket: str = "farm"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # Host:port that clients use for presigned URLs, when it differs from the one workers use.
    s3_public_endpoint: str = ""
    result_url_expiry_seconds: int = 24 * 3600

    api_bind: str = "127.0.0.1:8000"
    worker_metrics_port: int = 9101
    scheduler_metrics_port: int = 9102
    log_level: str = "INFO"
    log_format: str = "json"

    # Render sandbox and per-chunk limits.
    sandbox: str = "bwrap"
    sandbox_uid_base: int = 60000
    # Start the next jail (Python and manim imported) while the worker is idle.
    warm_sandbox: bool = True
    chunk_timeout_seconds: int = 600
    chunk_cpu_seconds: int = 1200
    chunk_memory_mb: int = 4096
    chunk_max_processes: int = 64
    chunk_max_file_mb: int = 2048
    chunk_max_disk_mb: int = 4096
    chunk_max_files: int = 20000
    chunk_max_open_files: int = 1024
    chunk_log_bytes: int = 256 * 1024
    plan_timeout_seconds: int = 120
    max_scene_seconds: int = 600  # longest video a job may produce
    max_output_mb: int = 2048
    # The jail's /proc: "fresh" (its own procfs, the default) or "none" (no procfs mounted: for
    # pods whose /proc is masked, such as GPU pools in the host user namespace, where bwrap
    # may not mount one; NVIDIA's /proc/driver/nvidia is bound read-only when present).
    jail_proc: str = "fresh"
    # The nice value of every jail's processes (renders and media checks): the worker's own
    # heartbeats and leases, and an API sharing the node, are served first under load.
    jail_nice: int = 10
    # Wall clock of the media jail that checks a chunk's video, and of the stitch's.
    media_timeout_seconds: int = 120
    stitch_timeout_seconds: int = 600
    # Who an identical earlier job's result is served to: "owner" (the same owner's keys
    # only) or "global" (every tenant; logs are still never served across owners).
    cache_scope: str = "owner"
    # The animation cache (farm/anim_cache.py): each rendered play's movie, reused by later jobs
    # within the same cache scope; evicted when unused this long, or least recently used first
    # beyond this many MB in all.
    anim_cache: bool = True
    anim_cache_max_age_seconds: int = 7 * 24 * 3600
    anim_cache_max_mb: int = 20 * 1024

    # Chunking.
    # Chunks a scene is split into at most; the planner cuts as many as its queue has render
    # slots free (workers announce theirs), within this cap.
    parallelism: int = 16
    min_chunk_seconds: float = 2.0
    # The plan renders while it plans (cairo, with the animation cache on): it draws the plays
    # the owner's cache lacks until it has spent this many seconds drawing, and only the rest
    # becomes chunks. A short scene, or an edit of a cached one, is done by its plan pass.
    # 0: a plan draws nothing.
    plan_render_seconds: float = 1.0
    # A plan that leaves chunks hands off before its program ends: the other chunks go out
    # while the same process (manim imported, the scene compiled) draws chunk 0 (cairo, with
    # the animation cache on; not for scenes with sounds).
    plan_handoff: bool = True
    # As it draws its first animation, a plan adds a helper pass per render slot free on its
    # queue: every pass runs the scene and draws the animations it reaches first
    # (workers/steps/helpers.py), so no plan precedes their frames and the passes balance
    # themselves; the plan then draws without a budget and hands nothing off. A helper on
    # the plan's own CPUs (and any helper after an edit's cached animations) waits until the
    # plan has drawn for plan_render_seconds. Cairo, with the animation cache on and
    # plan_render_seconds above 0.
    plan_helpers: bool = True
    # Reliability.
    max_attempts: int = 2
    lease_seconds: int = 30
    heartbeat_seconds: int = 5
    requeue_after_seconds: int = 120
    reaper_interval_seconds: float = 5.0
    # Fair dispatch across owners (farm.dispatch, run by `farm scheduler`).
    dispatch_owner_max_slots: int = 0  # plan/chunk steps in flight per owner; 0 = no cap
    dispatch_queue_depth: int = 2  # unclaimed messages kept on each render queue
    dispatch_interval_seconds: float = 1.0  # a round at least this often (notifies wake it)
    dispatch_metric_owners: int = 10  # owners with their own metric label; the rest "other"

    renderer: str = "cairo"
    # manim 0.22 can encode finished animations while drawing the next. More than 1 helps only
    # when a worker slot has spare cores: on 2 cores with 2 slots, 4 made chunks slower.
    # 0: from the CPUs, usable CPUs // render slots (farm/cpus.py).
    max_inflight_encoders: int = 0
    webhook_allowlist: tuple[str, ...] = field(default_factory=tuple)
    webhook_retry_delays: tuple[float, ...] = (30.0, 300.0, 1800.0)
    webhook_timeout_seconds: float = 10.0
    # Extra CA certificates (PEM file) trusted for webhook receivers, on top of the system's:
    # on-premises receivers with a private CA, and the tests' self-signed receiver.
    webhook_ca_bundle: str = ""
    # Scene assets (WebImage/WebSVG URLs), fetched by the worker on the scene's behalf.
    asset_fetch: bool = True  # false: a scene that asks for a URL fails at once
    # Hosts a scene may fetch from: empty = any public host; "example.com" or "*.example.com".
    asset_allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    asset_denied_hosts: tuple[str, ...] = field(default_factory=tuple)  # wins over allowed
    # CIDRs admitted although not public (on-premises asset servers; the tests' local server).
    asset_address_allowlist: tuple[str, ...] = field(default_factory=tuple)
    asset_allow_http: bool = False  # https only unless the operator says otherwise
    asset_max_bytes: int = 20 * 1024 * 1024
    asset_timeout_seconds: float = 15.0  # per URL, all redirects included
    asset_max_redirects: int = 3
    asset_max_per_job: int = 32
    asset_content_types: tuple[str, ...] = (
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/svg+xml",
        "application/xml",
        "text/xml",
    )
    asset_cache_seconds: int = 24 * 3600  # an owner's cached copy is fetched again after this
    asset_ca_bundle: str = ""  # extra CA certificates (PEM) trusted for asset hosts
    # Requests per second per user (all their keys together), with bursts: far above what
    # polling a few jobs every few seconds needs.
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 200
    # Unfinished jobs of one user that render at once; more are accepted and wait queued.
    # A user's own limit (``farm users update --max-active-jobs``) overrides it.
    max_active_jobs_per_user: int = 8

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests build their settings this way)."""
        return replace(self, **changes)


_COERCE = {bool: _bool, int: _int, float: _float}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build ``Settings`` from ``FARM_<FIELD>`` variables; bad values raise ``SettingsError``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    defaults = Settings()
    for f in fields(Settings):
        name = f"FARM_{f.name.upper()}"
        if name not in env:
            continue
        raw = env[name]
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            items = _list(name, raw)
            values[f.name] = (
                tuple(_float(name, i) for i in items) if f.name.endswith("delays") else items
            )
        else:
            values[f.name] = _COERCE.get(type(default), lambda _n, r: r)(name, raw)
    settings = Settings(**values)
    if settings.sandbox not in {"bwrap", "none"}:
        raise SettingsError(f"FARM_SANDBOX must be bwrap or none, not {settings.sandbox!r}")
    if settings.jail_proc not in {"fresh", "none"}:
        raise SettingsError(f"FARM_JAIL_PROC must be fresh or none, not {settings.jail_proc!r}")
    if settings.cache_scope not in {"owner", "global"}:
        raise SettingsError(
            f"FARM_CACHE_SCOPE must be owner or global, not {settings.cache_scope!r}"
        )
    if settings.renderer not in {"cairo", "opengl"}:
        raise SettingsError(f"FARM_RENDERER must be cairo or opengl, not {settings.renderer!r}")
    for cidr in settings.asset_address_allowlist:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise SettingsError(f"FARM_ASSET_ADDRESS_ALLOWLIST: {cidr!r} is not a CIDR") from None
    if settings.heartbeat_seconds * 2 > settings.lease_seconds:
        raise SettingsError("FARM_LEASE_SECONDS must be at least twice FARM_HEARTBEAT_SECONDS")
    return settings

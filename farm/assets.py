"""Scene assets: the URLs a scene asks for (``WebImage``, ``WebSVG``, ``requests.get``), fetched
by the worker on the scene's behalf, never by the jail, which has no network.

The flow: the plan pass runs with an empty assets directory; the jail-side shim
(``workers/jail/program/assets_shim.py``) records every URL the scene requested in a file in
the scratch (hostile input: ``read_misses`` validates it). The worker ``provide``s those URLs
(from the owner's cache in S3, else fetched under ``Policy``), writes them into the assets directory
(``<sha256(url)>`` holds the body, ``<sha256(url)>.json`` its type) and plans again; the chunks
get the same directory. A URL the policy refuses fails the scene with ``AssetRefused``, whose
message names the URL and the rule.

Fetching goes through ``farm.netguard`` (the webhooks' SSRF guard): https only (unless the
operator allows http), no private, loopback, link-local or metadata addresses, checked on the
connected address, every redirect re-checked from scratch; size, time and content-type caps;
the operator's allow and deny lists of hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import urllib3

from farm import netguard, objects
from farm.config import Settings

# Written by the jail-side shim into the scratch: one requested URL per line.
MISSES_FILE = "assets-missing.txt"
# The most of that file the worker reads: the scene wrote it.
MISSES_MAX_BYTES = 256 * 1024
MAX_URL_LENGTH = 2048
USER_AGENT = "manim-render-farm-assets/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_OWNER = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Printable ASCII without spaces: what an http client sends in a request line.
_URL_CHARS = re.compile(r"[!-~]+")


class AssetError(Exception):
    """A scene's URL could not be provided; the message names the URL and is fit for the user."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


class AssetRefused(AssetError):
    """The URL breaks the operator's policy (the rule is in the message)."""

    def __str__(self) -> str:
        return f"asset URL {_shown(self.url)} refused: {self.reason}"


class Interrupted(Exception):
    """``keep_going`` said stop (the job was canceled or the step's lease lost) between URLs."""


class AssetFailed(AssetError):
    """The URL is allowed but fetching it failed (unreachable, HTTP error, TLS)."""

    def __str__(self) -> str:
        return f"asset URL {_shown(self.url)} could not be fetched: {self.reason}"


def _shown(url: str) -> str:
    """The URL as an error message may quote it: the scene chose it."""
    return url if len(url) <= 300 and _URL_CHARS.fullmatch(url) else repr(url[:300])


@dataclass(frozen=True)
class Policy:
    """What the worker may fetch for a scene; built from ``Settings`` by ``from_settings``."""

    allowed_hosts: tuple[str, ...] = ()
    denied_hosts: tuple[str, ...] = ()
    address_allowlist: tuple[netguard.IPNetwork, ...] = ()
    allow_http: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_seconds: float = 15.0
    max_redirects: int = 3
    max_per_job: int = 32
    content_types: tuple[str, ...] = ("image/png", "image/jpeg", "image/svg+xml")
    cache_seconds: int = 24 * 3600
    ca_bundle: str = ""
    enabled: bool = True

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return cls(
            allowed_hosts=tuple(h.lower().rstrip(".") for h in s.asset_allowed_hosts),
            denied_hosts=tuple(h.lower().rstrip(".") for h in s.asset_denied_hosts),
            address_allowlist=tuple(netguard.parse_allowlist(s.asset_address_allowlist)),
            allow_http=s.asset_allow_http,
            max_bytes=s.asset_max_bytes,
            timeout_seconds=s.asset_timeout_seconds,
            max_redirects=s.asset_max_redirects,
            max_per_job=s.asset_max_per_job,
            content_types=tuple(t.lower() for t in s.asset_content_types),
            cache_seconds=s.asset_cache_seconds,
            ca_bundle=s.asset_ca_bundle,
            enabled=s.asset_fetch,
        )

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)


@dataclass(frozen=True)
class Asset:
    url: str
    content_type: str
    body: bytes


# --- names ------------------------------------------------------------------------------------


def digest(url: str) -> str:
    """The asset's file name in the jail's assets directory (the shim computes the same)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def manifest_key(job_id: str) -> str:
    """The URLs a job's plan fetched, in order (JSON), for its chunks."""
    return objects.asset_manifest(job_id)


def cache_keys(owner: str, url: str) -> tuple[str, str]:
    """S3 keys of an owner's cached copy of ``url``: (body, metadata JSON)."""
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"an asset owner is an id, not {owner!r}")
    prefix = objects.asset_cache(owner, digest(url))
    return prefix, prefix + ".json"


# --- what the jail asked for -----------------------------------------------------------------


def read_misses(path: Path, policy: Policy) -> list[str]:
    """The URLs the jail's shim recorded at ``path``, in order, without repeats.

    The file is the scene's: it is read with ``O_NOFOLLOW``, size-capped, and a line that is
    not a plausible http(s) URL fails the scene, as do more URLs than the policy allows.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:  # a symlink where the file should be
        raise AssetRefused(path.name, f"the scene's request list is unreadable ({exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AssetRefused(path.name, "the scene's request list is not a file")
        raw = os.read(fd, MISSES_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MISSES_MAX_BYTES:
        raise AssetRefused("(many)", f"the scene asked for more than {policy.max_per_job} URLs")
    urls: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line or line in urls:
            continue
        if (
            len(line) > MAX_URL_LENGTH
            or not _URL_CHARS.fullmatch(line)
            or urlsplit(line).scheme not in ("http", "https")
        ):
            raise AssetRefused(line, "not an http(s) URL the farm can fetch")
        urls.append(line)
    if len(urls) > policy.max_per_job:
        raise AssetRefused(
            urls[policy.max_per_job],
            f"the scene asks for more than {policy.max_per_job} URLs (FARM_ASSET_MAX_PER_JOB)",
        )
    return urls


# --- the policy -------------------------------------------------------------------------------


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def check_url(url: str, policy: Policy) -> netguard.Target:
    """Everything about ``url`` that can be refused without a connection; raise ``AssetRefused``."""
    if not policy.enabled:
        raise AssetRefused(url, "this farm fetches no assets for scenes (FARM_ASSET_FETCH)")
    if len(url) > MAX_URL_LENGTH or not _URL_CHARS.fullmatch(url):
        raise AssetRefused(url, "not an http(s) URL the farm can fetch")
    try:
        where = netguard.target(url, policy.schemes)
    except netguard.Refused as exc:
        raise AssetRefused(url, str(exc).removeprefix("refused: ")) from None
    except ValueError as exc:
        raise AssetRefused(url, f"invalid URL ({exc})") from None
    if urlsplit(url).username is not None:
        raise AssetRefused(url, "credentials in asset URLs are not allowed")
    host = where.host.lower().rstrip(".")
    if any(_host_matches(host, p) for p in policy.denied_hosts):
        raise AssetRefused(url, f"host {host} is on the deny list (FARM_ASSET_DENIED_HOSTS)")
    if policy.allowed_hosts and not any(_host_matches(host, p) for p in policy.allowed_hosts):
        raise AssetRefused(url, f"host {host} is not on the allow list (FARM_ASSET_ALLOWED_HOSTS)")
    return where


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


# --- fetching ---------------------------------------------------------------------------------


def fetch(url: str, policy: Policy) -> Asset:
    """GET ``url`` under ``policy``, following at most ``max_redirects`` redirects, each checked
    like the first URL; raise ``AssetRefused`` (policy) or ``AssetFailed`` (network, HTTP)."""
    deadline = time.monotonic() + policy.timeout_seconds
    current = url
    for _hop in range(policy.max_redirects + 1):
        try:
            where = check_url(current, policy)
        except AssetRefused as exc:
            raise AssetRefused(url, _hop_note(current, url) + exc.reason) from None
        try:
            ip = netguard.pick_address(where.host, where.port, policy.address_allowlist)
        except netguard.Refused as exc:
            reason = str(exc).removeprefix("refused: ")
            raise AssetRefused(url, _hop_note(current, url) + reason) from None
        except OSError as exc:
            raise AssetFailed(url, f"could not resolve {where.host}: {exc}") from None
        status, location, asset = _get(url, current, where, ip, policy, deadline)
        if asset is not None:
            return asset
        if status in REDIRECTS:
            if not location:
                raise AssetFailed(url, f"HTTP {status} without a Location")
            current = urljoin(current, location)
            continue
        raise AssetFailed(url, _hop_note(current, url) + f"HTTP {status}")
    raise AssetRefused(
        url, f"more than {policy.max_redirects} redirects (FARM_ASSET_MAX_REDIRECTS)"
    )


def _hop_note(current: str, url: str) -> str:
    return "" if current == url else f"redirected to {_shown(current)}: "


def _get(
    url: str,
    current: str,
    where: netguard.Target,
    ip: netguard.IPAddress,
    policy: Policy,
    deadline: float,
) -> tuple[int, str | None, Asset | None]:
    """One request: (status, Location, the asset when it is a 2xx within the caps)."""
    late = f"took longer than {policy.timeout_seconds:g} s (FARM_ASSET_TIMEOUT_SECONDS)"
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AssetRefused(url, late)
    pool = netguard.pinned_pool(
        where,
        ip,
        allowlist=policy.address_allowlist,
        timeout=remaining,
        ca_bundle=policy.ca_bundle,
    )
    try:
        response = pool.urlopen(
            "GET",
            where.path,
            headers={"host": where.host_header, "user-agent": USER_AGENT, "accept": "*/*"},
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
        try:
            status = int(response.status)
            if status in REDIRECTS:
                return status, response.headers.get("location"), None
            if not 200 <= status < 300:
                return status, None, None
            content_type = _media_type(response.headers.get("content-type"))
            if content_type not in policy.content_types:
                shown = content_type or "none"
                raise AssetRefused(
                    url,
                    _hop_note(current, url) + f"content type {shown} is not allowed"
                    f" ({', '.join(policy.content_types)}; FARM_ASSET_CONTENT_TYPES)",
                )
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise AssetFailed(url, "the server sent a compressed body (not asked for)")
            too_big = f"larger than {policy.max_bytes} bytes (FARM_ASSET_MAX_BYTES)"
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                raise AssetRefused(url, too_big)
            body = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise AssetRefused(url, late)
                chunk = response.read1(64 * 1024)
                if not chunk:
                    break
                body += chunk
                if len(body) > policy.max_bytes:
                    raise AssetRefused(url, too_big)
            return status, None, Asset(url=url, content_type=content_type, body=bytes(body))
        finally:
            response.release_conn()
    except netguard.Refused as exc:  # the connected peer was forbidden
        raise AssetRefused(url, str(exc).removeprefix("refused: ")) from None
    except urllib3.exceptions.NewConnectionError as exc:  # urllib3 calls it a timeout, too
        raise AssetFailed(url, f"connection failed: {exc}") from None
    except urllib3.exceptions.TimeoutError:
        raise AssetRefused(url, late) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise AssetFailed(url, f"connection failed: {exc}") from None
    finally:
        pool.close()


# --- the owner's cache and the jail's directory ----------------------------------------------


class Store(Protocol):
    """The part of ``farm.storage.Storage`` the cache uses."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...


def cached(storage: Store, owner: str, url: str, max_age: float | None) -> Asset | None:
    """The owner's cached copy of ``url``; None when absent or older than ``max_age`` seconds."""
    body_key, meta_key = cache_keys(owner, url)
    try:
        meta: dict[str, Any] = json.loads(storage.get_bytes(meta_key))
        if meta.get("url") != url:
            return None
        if max_age is not None and time.time() - float(meta["fetched_at"]) > max_age:
            return None
        body = storage.get_bytes(body_key)
    except FileNotFoundError:
        return None
    if len(body) != meta.get("bytes"):
        return None  # a body replaced under a newer manifest's feet: fetch again
    return Asset(url=url, content_type=str(meta["content_type"]), body=body)


def store(storage: Store, owner: str, asset: Asset) -> None:
    """Cache ``asset`` for ``owner``: the body first, then the manifest that makes it a hit."""
    body_key, meta_key = cache_keys(owner, asset.url)
    storage.put_bytes(body_key, asset.body, asset.content_type)
    meta = {
        "url": asset.url,
        "content_type": asset.content_type,
        "bytes": len(asset.body),
        "fetched_at": time.time(),
    }
    storage.put_bytes(meta_key, json.dumps(meta).encode(), "application/json")


def write(directory: Path, asset: Asset) -> None:
    """Put ``asset`` where the jail's shim looks for it (readable by the jail's uid)."""
    name = digest(asset.url)
    for path, data in (
        (directory / name, asset.body),
        (directory / f"{name}.json", json.dumps({"url": asset.url, "type": asset.content_type})),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def provide(
    urls: Iterable[str],
    *,
    owner: str,
    storage: Store,
    policy: Policy,
    directory: Path,
    max_age: float | None = -1,
    keep_going: Callable[[], bool] = lambda: True,
) -> list[Asset]:
    """Make every URL available to the jail in ``directory``: from the owner's cache when fresh
    (``max_age`` seconds; -1: the policy's; None: any age), else fetched and cached.

    Policy is checked before the cache, so a host the operator denied since is refused.
    ``keep_going`` is asked before each URL (the step's heartbeat); False raises ``Interrupted``.
    """
    age = policy.cache_seconds if max_age == -1 else max_age
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    provided: list[Asset] = []
    for url in _capped(urls, policy):
        if not keep_going():
            raise Interrupted(url)
        check_url(url, policy)
        asset = cached(storage, owner, url, age)
        if asset is None or len(asset.body) > policy.max_bytes:
            asset = fetch(url, policy)
            store(storage, owner, asset)
        write(directory, asset)
        provided.append(asset)
    return provided


def _capped(urls: Iterable[str], policy: Policy) -> Sequence[str]:
    unique = list(dict.fromkeys(urls))
    if len(unique) > policy.max_per_job:
        raise AssetRefused(
            unique[policy.max_per_job],
            f"the scene asks for more than {policy.max_per_job} URLs (FARM_ASSET_MAX_PER_JOB)",
        )
    return unique

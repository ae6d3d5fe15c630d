"""Scene assets: the worker fetches a scene's URLs under the SSRF guard and the operator's policy,
caches them per owner in S3, and the jail-side shim answers the scene's requests from them.

A local HTTPS server on 127.0.0.1 (self-signed, its certificate the trusted CA bundle) stands in
for the internet; the tests' policy admits 127.0.0.1/32, and without that allowance the same
URLs are refused.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from farm import assets, netguard
from farm.assets import AssetFailed, AssetRefused, Policy
from farm.config import SettingsError, load_settings
from tests.conftest import submit, unique, wait_for
from tests.support import download, self_signed_cert

ROOT = Path(__file__).resolve().parent.parent


def png_bytes(color: tuple[int, int, int] = (200, 40, 40), size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<circle cx="5" cy="5" r="4" fill="red"/></svg>'
)


class AssetServer:
    """Serves fixed routes over HTTPS (or HTTP) on 127.0.0.1 and counts the hits per path."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.hits: dict[str, int] = {}
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.drip: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, headers, body = server.routes.get(self.path, (404, {}, b"nope"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if self.path in server.drip:
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for _ in range(200):
                        self.wfile.write(b"1\r\nx\r\n")
                        self.wfile.flush()
                        time.sleep(0.05)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if "transfer-encoding" not in headers:
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                if headers.get("transfer-encoding") == "chunked":
                    self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
                else:
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if cert is not None and key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(
        self, path: str, body: bytes, content_type: str, status: int = 200, **hdr: str
    ) -> str:
        headers = {"content-type": content_type, **{k.replace("_", "-"): v for k, v in hdr.items()}}
        self.routes[path] = (status, headers, body)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = (status, {"location": location}, b"")
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("asset-tls"))


@pytest.fixture(scope="module")
def site(tls: tuple[Path, Path]) -> Iterator[AssetServer]:
    server = AssetServer(*tls)
    yield server
    server.close()


@pytest.fixture()
def policy(tls: tuple[Path, Path]) -> Policy:
    """The tests' policy: the local server's address is admitted, its certificate trusted."""
    return Policy(
        address_allowlist=tuple(netguard.parse_allowlist(["127.0.0.1/32"])),
        ca_bundle=str(tls[0]),
        timeout_seconds=5,
        max_bytes=1024 * 1024,
        content_types=("image/png", "image/svg+xml"),
    )


def owner() -> str:
    return uuid.uuid4().hex


# --- fetching under the policy ---------------------------------------------------------------


def test_an_allowed_https_image_is_fetched(site: AssetServer, policy: Policy) -> None:
    url = site.route("/cat.png", png_bytes(), "image/png")
    asset = assets.fetch(url, policy)
    assert asset.url == url and asset.content_type == "image/png"
    assert Image.open(io.BytesIO(asset.body)).size == (8, 8)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_without_the_allowance(
    site: AssetServer, policy: Policy, host: str
) -> None:
    # Given the same server, When the operator has not admitted its address
    url = site.route("/refused.png", png_bytes(), "image/png").replace("127.0.0.1", host)
    before = site.hits.get("/refused.png", 0)
    with pytest.raises(AssetRefused) as refused:
        assets.fetch(url, Policy(ca_bundle=policy.ca_bundle))
    # Then the scene's error names the URL and the rule, and nothing was requested
    assert str(refused.value).startswith(f"asset URL {url} refused:")
    assert "loopback" in str(refused.value)
    assert site.hits.get("/refused.png", 0) == before


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://10.1.2.3/a.png", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local: cloud metadata"),
        ("https://169.254.1.1/a.png", "(link-local)"),
        ("https://[::ffff:127.0.0.1]/a.png", "loopback"),
        ("https://[fe80::1]/a.png", "link-local"),
        ("https://0.0.0.0/a.png", "unspecified"),
        ("http://93.184.216.34/a.png", "only https URLs"),
        ("file:///etc/passwd", "only https URLs"),
        ("https://user:pw@93.184.216.34/a.png", "credentials"),
        ("https://93.184.216.34/a b.png", "not an http(s) URL"),
    ],
)
def test_forbidden_targets_are_refused_before_connecting(
    url: str, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(AssetRefused) as refused:
        assets.fetch(url, Policy())
    assert rule in str(refused.value)
    assert attempts == []


def test_the_connected_address_is_checked_too(
    site: AssetServer, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a resolver that (like a DNS rebinding) hands out an address the check let through,
    url = site.route("/rebind.png", png_bytes(), "image/png")
    monkeypatch.setattr(
        netguard, "pick_address", lambda host, port, allow: ipaddress.ip_address("127.0.0.1")
    )
    before = site.hits.get("/rebind.png", 0)
    # When the connection is made without the loopback allowance
    with pytest.raises(AssetRefused) as refused:
        assets.fetch(url, Policy(ca_bundle=policy.ca_bundle))
    # Then the connected socket's peer is refused before a request is sent
    assert "connected to a forbidden address: 127.0.0.1 (loopback)" in str(refused.value)
    assert site.hits.get("/rebind.png", 0) == before


def test_redirects_are_followed_and_each_hop_is_checked(site: AssetServer, policy: Policy) -> None:
    final = site.route("/final.svg", SVG, "image/svg+xml")
    hop = site.redirect("/hop", "/final.svg", 301)
    assert assets.fetch(site.redirect("/start", hop), policy).body == SVG

    # A redirect to the metadata address, to another loopback address, to plain http
    for name, location, rule in [
        ("/to-metadata", "https://169.254.169.254/latest/meta-data/", "link-local"),
        ("/to-loopback", f"https://127.0.0.2:{site.port}/final.svg", "127.0.0.2 (loopback)"),
        ("/to-http", final.replace("https://", "http://"), "only https URLs"),
    ]:
        url = site.redirect(name, location)
        with pytest.raises(AssetRefused) as refused:
            assets.fetch(url, policy)
        assert str(refused.value).startswith(f"asset URL {url} refused: redirected to")
        assert rule in str(refused.value)

    # Too many hops
    site.redirect("/loop", "/loop")
    with pytest.raises(AssetRefused, match="more than 3 redirects"):
        assets.fetch(site.url("/loop"), policy)


def test_size_type_and_time_caps(site: AssetServer, policy: Policy) -> None:
    small = Policy(**{**vars(policy), "max_bytes": 1000})
    big = site.route("/big.png", b"\x89PNG" + b"0" * 5000, "image/png")
    with pytest.raises(AssetRefused, match="larger than 1000 bytes"):
        assets.fetch(big, small)
    # No content-length: the cap holds while streaming
    chunked = site.route("/chunked.png", b"0" * 5000, "image/png", transfer_encoding="chunked")
    with pytest.raises(AssetRefused, match=r"larger than 1000 bytes \(FARM_ASSET_MAX_BYTES\)"):
        assets.fetch(chunked, small)
    assert len(assets.fetch(chunked, policy).body) == 5000

    html = site.route("/page.html", b"<html></html>", "text/html; charset=utf-8")
    with pytest.raises(AssetRefused, match="content type text/html is not allowed"):
        assets.fetch(html, policy)
    untyped = site.route("/untyped", b"x", "")
    with pytest.raises(AssetRefused, match="content type none is not allowed"):
        assets.fetch(untyped, policy)

    # A server that sends one byte every 50 ms for 10 s
    site.route("/slow.png", b"", "image/png")
    site.drip.add("/slow.png")
    quick = Policy(**{**vars(policy), "timeout_seconds": 1.0})
    with pytest.raises(AssetRefused, match=r"took longer than 1 s"):
        assets.fetch(site.url("/slow.png"), quick)


def test_http_errors_and_unreachable_hosts_fail_with_the_url(
    site: AssetServer, policy: Policy
) -> None:
    missing = site.url("/missing.png")
    with pytest.raises(AssetFailed) as failed:
        assets.fetch(missing, policy)
    assert str(failed.value) == f"asset URL {missing} could not be fetched: HTTP 404"
    # Nothing listens on a port just released: the connection is refused
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(AssetFailed, match="connection failed"):
        assets.fetch(f"https://127.0.0.1:{closed}/a.png", policy)
    # A certificate the policy does not trust
    with pytest.raises(AssetFailed, match="CERTIFICATE_VERIFY_FAILED"):
        assets.fetch(
            site.route("/a.png", png_bytes(), "image/png"),
            Policy(**{**vars(policy), "ca_bundle": ""}),
        )


def test_operator_host_lists(site: AssetServer, policy: Policy) -> None:
    url = site.route("/host.png", png_bytes(), "image/png").replace("127.0.0.1", "localhost")
    allowed = Policy(**{**vars(policy), "allowed_hosts": ("localhost",)})
    assert assets.fetch(url, allowed).content_type == "image/png"

    others = Policy(**{**vars(policy), "allowed_hosts": ("example.org", "*.example.org")})
    with pytest.raises(AssetRefused, match="host localhost is not on the allow list"):
        assets.fetch(url, others)
    denied = Policy(**{**vars(allowed), "denied_hosts": ("localhost",)})
    with pytest.raises(AssetRefused, match="host localhost is on the deny list"):
        assets.fetch(url, denied)
    wildcard = Policy(**{**vars(policy), "denied_hosts": ("*.example.org",)})
    with pytest.raises(AssetRefused, match="deny list"):
        assets.check_url("https://cdn.example.org/a.png", wildcard)
    assert assets.check_url("https://example.org/a.png", wildcard).host == "example.org"


def test_plain_http_only_when_the_operator_allows_it(policy: Policy) -> None:
    server = AssetServer()
    try:
        url = server.route("/plain.png", png_bytes(), "image/png")
        with pytest.raises(AssetRefused, match="only https URLs"):
            assets.fetch(url, policy)
        http = Policy(**{**vars(policy), "allow_http": True})
        assert assets.fetch(url, http).content_type == "image/png"
    finally:
        server.close()


def test_policy_comes_from_settings() -> None:
    settings = load_settings(
        {
            "FARM_ASSET_ALLOWED_HOSTS": "Upload.Wikimedia.org., *.githubusercontent.com",
            "FARM_ASSET_DENIED_HOSTS": "evil.example",
            "FARM_ASSET_ADDRESS_ALLOWLIST": "10.0.0.0/8",
            "FARM_ASSET_MAX_BYTES": "1234",
            "FARM_ASSET_TIMEOUT_SECONDS": "2.5",
            "FARM_ASSET_CONTENT_TYPES": "image/png",
            "FARM_ASSET_FETCH": "false",
        }
    )
    p = Policy.from_settings(settings)
    assert p.allowed_hosts == ("upload.wikimedia.org", "*.githubusercontent.com")
    assert p.denied_hosts == ("evil.example",) and p.max_bytes == 1234
    assert p.timeout_seconds == 2.5 and p.content_types == ("image/png",)
    assert ipaddress.ip_address("10.9.9.9") in p.address_allowlist[0]
    with pytest.raises(AssetRefused, match="FARM_ASSET_FETCH"):
        assets.check_url("https://upload.wikimedia.org/a.png", p)
    with pytest.raises(SettingsError, match="FARM_ASSET_ADDRESS_ALLOWLIST"):
        load_settings({"FARM_ASSET_ADDRESS_ALLOWLIST": "10.0.0.0/8,intranet"})


# --- the per-owner cache in S3 ---------------------------------------------------------------


def test_the_cache_is_per_owner_and_expires(
    site: AssetServer, policy: Policy, storage: Any, tmp_path: Path
) -> None:
    url = site.route(f"/cached-{uuid.uuid4().hex}.png", png_bytes(), "image/png")
    path = url.split(str(site.port), 1)[1]
    alice, bob = owner(), owner()

    def provide(who: str, **kw: Any) -> list[assets.Asset]:
        return assets.provide(
            [url, url], owner=who, storage=storage, policy=policy, directory=tmp_path, **kw
        )

    # Given Alice's scene asked for the URL twice: one fetch, cached under keys for Alice
    assert [a.content_type for a in provide(alice)] == ["image/png"]
    assert site.hits[path] == 1
    body_key, meta_key = assets.cache_keys(alice, url)
    assert body_key == f"assets/{alice}/{assets.digest(url)}" and meta_key == body_key + ".json"
    assert storage.get_bytes(body_key) == png_bytes()
    # When Alice asks again, the cache answers; Bob's scene fetches its own copy
    provide(alice)
    assert site.hits[path] == 1
    provide(bob)
    assert site.hits[path] == 2
    # An expired entry is fetched again; "any age" (chunks of a planned job) is not
    provide(alice, max_age=0)
    assert site.hits[path] == 3
    provide(alice, max_age=None)
    assert site.hits[path] == 3
    # The jail's directory holds the body and its type under the URL's digest
    name = assets.digest(url)
    assert (tmp_path / name).read_bytes() == png_bytes()
    assert json.loads((tmp_path / f"{name}.json").read_text()) == {"url": url, "type": "image/png"}
    # A host denied since is refused although cached
    denied = Policy(**{**vars(policy), "denied_hosts": ("127.0.0.1",)})
    with pytest.raises(AssetRefused, match="deny list"):
        assets.provide([url], owner=alice, storage=storage, policy=denied, directory=tmp_path)


def test_cache_keys_are_built_from_ids_only() -> None:
    with pytest.raises(ValueError):
        assets.cache_keys("../jobs", "https://example.org/a.png")
    a, _ = assets.cache_keys("key_1", "https://example.org/a.png")
    b, _ = assets.cache_keys("key_1", "https://example.org/a.png?")
    assert a != b and a.startswith("assets/key_1/")


def test_too_many_urls_are_refused(policy: Policy, storage: Any, tmp_path: Path) -> None:
    few = Policy(**{**vars(policy), "max_per_job": 2})
    urls = [f"https://127.0.0.1:9/{i}.png" for i in range(3)]
    with pytest.raises(AssetRefused, match=r"more than 2 URLs \(FARM_ASSET_MAX_PER_JOB\)"):
        assets.provide(urls, owner=owner(), storage=storage, policy=few, directory=tmp_path)


# --- what the jail recorded (hostile) ----------------------------------------------------------


def test_the_jails_request_list_is_read_as_hostile(tmp_path: Path, policy: Policy) -> None:
    misses = tmp_path / assets.MISSES_FILE
    assert assets.read_misses(misses, policy) == []
    misses.write_text("https://a.example/x.png\n\nhttps://a.example/x.png\nhttps://b.example/y\n")
    assert assets.read_misses(misses, policy) == ["https://a.example/x.png", "https://b.example/y"]

    misses.write_text("https://a.example/x.png\nfile:///etc/shadow\n")
    with pytest.raises(AssetRefused, match="not an http"):
        assets.read_misses(misses, policy)
    misses.write_text("\n".join(f"https://a.example/{i}" for i in range(40)))
    with pytest.raises(AssetRefused, match="more than 32 URLs"):
        assets.read_misses(misses, policy)
    misses.write_bytes(b"x" * (assets.MISSES_MAX_BYTES + 10))
    with pytest.raises(AssetRefused):
        assets.read_misses(misses, policy)

    misses.unlink()
    misses.symlink_to("/etc/passwd")
    with pytest.raises(AssetRefused, match="unreadable"):
        assets.read_misses(misses, policy)
    misses.unlink()
    os.mkfifo(misses)
    with pytest.raises(AssetRefused, match="not a file"):
        assets.read_misses(misses, policy)


# --- the jail-side shim -----------------------------------------------------------------------

SHIM_CHECK = r"""
import json, sys, urllib.error, urllib.request
sys.path.insert(0, sys.argv[1])
from workers.jail.program import assets_shim
assets_shim.install(sys.argv[2], sys.argv[3])
import requests
url, missing = sys.argv[4], sys.argv[5]
out = {}
r = requests.get(url, timeout=30)
r.raise_for_status()
out["requests"] = [r.status_code, r.headers["content-type"], len(r.content)]
out["session"] = len(requests.Session().get(url).content)
out["urllib"] = len(urllib.request.urlopen(url).read())
try:
    requests.get(missing)
except requests.RequestException as exc:
    out["requests_miss"] = str(exc)
try:
    urllib.request.urlopen(missing + "?u")
except urllib.error.URLError as exc:
    out["urllib_miss"] = str(exc.reason)
# The plan's discovery pass: misses are recorded and answered with stand-ins
assets_shim.install(sys.argv[2], sys.argv[3], placeholders=True)
from PIL import Image
import io
stand_in = requests.get(missing.replace("dog", "cow"))
size = Image.open(io.BytesIO(stand_in.content)).size
out["png_stand_in"] = [stand_in.headers["content-type"], size]
svg = urllib.request.urlopen(missing.replace("dog.png", "logo.SVG"))
out["svg_stand_in"] = [svg.headers["content-type"], svg.read().startswith(b"<?xml")]
print(json.dumps(out))
"""


def test_the_shim_answers_requests_and_urllib_and_records_misses(tmp_path: Path) -> None:
    # The shim runs in a fresh interpreter, as in the jail (its patches are process-wide).
    url, missing = "https://example.org/cat.png", "https://example.org/dog.png"
    directory = tmp_path / "assets"
    directory.mkdir()
    assets.write(directory, assets.Asset(url, "image/png", png_bytes()))
    misses = tmp_path / assets.MISSES_FILE
    run = subprocess.run(
        [sys.executable, "-c", SHIM_CHECK, str(ROOT), str(directory), str(misses), url, missing],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    size = len(png_bytes())
    assert out["requests"] == [200, "image/png", size]
    assert out["session"] == size and out["urllib"] == size
    assert out["requests_miss"].startswith(f"{missing} is not available inside the render sandbox")
    assert "is not available" in out["urllib_miss"]
    assert out["png_stand_in"] == ["image/png", [2, 2]]
    assert out["svg_stand_in"] == ["image/svg+xml", True]
    stand_ins = [missing.replace("dog", "cow"), missing.replace("dog.png", "logo.SVG")]
    assert assets.read_misses(misses, Policy()) == [missing, missing + "?u", *stand_ins]


def test_shim_and_host_agree_on_names() -> None:
    from workers.jail.program import assets_shim

    for url in ["https://example.org/a.png", "https://example.org/ü?q=1"]:
        assert assets_shim.digest(url) == assets.digest(url)
    assert assets_shim.MISSES_FILE == assets.MISSES_FILE


def test_the_shim_imports_only_the_standard_library() -> None:
    # At module level only the standard library; requests and manim are patched when present.
    source = (ROOT / "workers" / "jail" / "program" / "assets_shim.py").read_text()
    top, lazy = set(), set()
    for line in source.splitlines():
        if line.lstrip().startswith(("import ", "from ")) and "__future__" not in line:
            (lazy if line[0].isspace() else top).add(line.split()[1].split(".")[0])
    assert top <= set(sys.stdlib_module_names), top
    assert lazy <= set(sys.stdlib_module_names) | {"requests", "manim"}, lazy


# --- through the farm: plan -> fetch -> plan again -> chunks ---------------------------------

WEB_SCENE = """
from manim import *
from manim_kodisc import *

class Gallery(Scene):
    def construct(self):
        thumbs = Group(*[WebImage("{thumb}" + str(i)) for i in range(4)])
        thumbs.arrange(DOWN).set(height=6).to_edge(LEFT)
        photo = WebImage("{png}").set(height=4)
        self.play(FadeIn(photo), FadeIn(thumbs), run_time=0.5)
        logo = WebSVG("{svg}").set(height=2).to_edge(RIGHT)
        self.play(FadeIn(logo), run_time=0.5)
        self.wait(0.5)
# {tag}
"""

REFUSED_SCENE = """
from manim import *
from manim_kodisc import *

class Sneaky(Scene):
    def construct(self):
        self.add(WebImage("{url}"))
        self.wait(0.2)
"""


@pytest.fixture(scope="module")
def farm_site(tls: tuple[Path, Path], settings: Any) -> Iterator[AssetServer]:
    """The local server, its certificate the CA bundle the tests' workers trust for assets."""
    Path(settings.asset_ca_bundle).parent.mkdir(exist_ok=True)
    shutil.copyfile(tls[0], settings.asset_ca_bundle)
    server = AssetServer(*tls)
    yield server
    server.close()


def last_frame(video: Path) -> tuple[int, int, bytes]:
    probe = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames"),
            *("-show_entries", "stream=width,height,nb_read_frames", "-of", "json", str(video)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    raw = subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-sseof", "-0.2", "-i", str(video), "-frames:v", "1"),
            *("-f", "rawvideo", "-pix_fmt", "rgb24", "-"),
        ],
        check=True,
        capture_output=True,
    ).stdout
    return int(stream["width"]), int(stream["nb_read_frames"]), raw


def test_a_webimage_scene_renders_through_the_farm(
    farm_site: AssetServer, client: Any, api_key: Any, worker: Any, tmp_path: Path
) -> None:
    # Given a Kodisc scene that downloads a PNG and an SVG from an (allowed) https server
    tag = unique()
    png = farm_site.route(f"/{tag}/photo.png", png_bytes((220, 30, 30), 64), "image/png")
    svg = farm_site.route(f"/{tag}/logo.svg", SVG, "image/svg+xml")
    for i in range(4):
        thumb = farm_site.route(f"/{tag}/thumb?n={i}", png_bytes((30, 30, 220), 16), "image/png")
    code = WEB_SCENE.format(png=png, svg=svg, thumb=thumb[:-1], tag=tag)
    # When the farm renders it in chunks (the jail has no network)
    job = wait_for(client, api_key, submit(client, api_key, code, "Gallery", fps=10), timeout=180)
    # Then it completes, and the photo is in the picture
    assert job["status"] == "completed", job.get("error")
    width, frames, frame = last_frame(download(job["result"]["video"], tmp_path / "g.mp4"))
    assert frames == 15
    height = len(frame) // (width * 3)
    center = ((height // 2) * width + width // 2) * 3
    r, g, b = frame[center : center + 3]
    assert r > 150 and g < 90 and b < 90, (r, g, b)
    # The worker fetched each of the 6 URLs once (one discovery pass found them all, more than
    # the 3 fetch rounds a plan may take); the second plan pass and the chunks used the cache
    assert farm_site.hits[f"/{tag}/photo.png"] == 1
    assert farm_site.hits[f"/{tag}/logo.svg"] == 1
    assert [farm_site.hits[f"/{tag}/thumb?n={i}"] for i in range(4)] == [1, 1, 1, 1]


def test_a_scene_asking_for_a_loopback_url_fails_naming_url_and_rule(
    farm_site: AssetServer, client: Any, api_key: Any, worker: Any
) -> None:
    # Given a URL on a loopback address the operator did not admit (only 127.0.0.1/32 is)
    url = farm_site.route(f"/{unique()}.png", png_bytes(), "image/png")
    url = url.replace("127.0.0.1", "127.0.0.2")
    job = wait_for(
        client, api_key, submit(client, api_key, REFUSED_SCENE.format(url=url), "Sneaky")
    )
    # Then the job fails as the scene's error, naming the URL and the rule
    assert job["status"] == "failed", job
    message = job["error"]["message"] if isinstance(job["error"], dict) else str(job["error"])
    assert f"asset URL {url} refused:" in message
    assert "127.0.0.2 (loopback)" in message

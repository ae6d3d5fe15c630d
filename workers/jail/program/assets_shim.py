"""Inside the jail: a scene's web requests answered from the assets the worker fetched for it.

The jail has no network. ``install(assets_dir, misses_file)`` makes ``requests`` (every
``requests.get``/``Session``, as ``manim_kodisc``'s ``WebImage`` and ``WebSVG`` use) and
``urllib.request.urlopen`` read ``<assets_dir>/<sha256(url)>`` (the body) and
``<sha256(url)>.json`` (``{"url", "type"}``), both written by the worker
(``farm.assets.write``). A URL not there is appended to ``misses_file`` and the request raises
``AssetNotFetched`` (a ``requests.ConnectionError`` / ``urllib.error.URLError``, as a network
failure would); the worker then fetches the recorded URLs under the operator's policy and runs
the scene again.

In the plan's discovery pass (``placeholders=True``) a miss is recorded and answered with a
small grey placeholder instead (an SVG when the URL's path ends in ``.svg``, else a PNG), so the
scene runs on and every URL it asks for is found in one pass, not one pass per URL; the worker
plans again with the real assets before anything is drawn. Chunks never get placeholders.

This module is part of the jail's program: it imports only the standard library (``requests``
is patched only if the scene's environment has it), never the farm.
"""

from __future__ import annotations

import base64
import email.message
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from typing import Any

ASSETS_DIR = "/assets"  # where the worker binds the job's fetched assets, read-only
MISSES_FILE = "assets-missing.txt"  # in the jail's scratch; farm.assets.MISSES_FILE agrees
_MAX_RECORDED = 1000

_state: dict[str, Any] = {}

# Discovery-pass stand-ins: a 2x2 grey PNG, and an SVG with one grey square.
_PLACEHOLDER_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFElEQVR42mNsaGj4z8DAwMDEAAUAJigCg249sA4AAAAASUVORK5CYII="
)
_PLACEHOLDER_SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="#808080"/></svg>'
)

__all__ = ["ASSETS_DIR", "MISSES_FILE", "AssetNotFetched", "install", "lookup"]


class AssetNotFetched(OSError):
    """The scene asked for a URL the farm has not fetched (yet)."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"{url} is not available inside the render sandbox yet: the farm fetches the URLs a"
            " scene asks for before rendering it"
        )
        self.url = url


def digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def lookup(url: str) -> tuple[bytes, str]:
    """(body, content type) of ``url``; records the miss and raises ``AssetNotFetched``."""
    directory = _state.get("dir", ASSETS_DIR)
    name = digest(url)
    try:
        with open(os.path.join(directory, name + ".json"), encoding="utf-8") as meta_file:
            meta = json.load(meta_file)
        if meta.get("url") == url:
            with open(os.path.join(directory, name), "rb") as body_file:
                return body_file.read(), str(meta.get("type") or "application/octet-stream")
    except (OSError, ValueError):
        pass
    _record(url)
    if _state.get("placeholders"):
        if urllib.parse.urlsplit(url).path.lower().endswith(".svg"):
            return _PLACEHOLDER_SVG, "image/svg+xml"
        return _PLACEHOLDER_PNG, "image/png"
    raise _state.get("requests_error", AssetNotFetched)(url)


def missed() -> bool:
    """Whether the scene asked for a URL the worker had not fetched (so far, this process)."""
    return bool(_state.get("recorded"))


def _record(url: str) -> None:
    recorded: list[str] = _state.setdefault("recorded", [])
    if url in recorded or len(recorded) >= _MAX_RECORDED:
        return
    recorded.append(url)
    path = _state.get("misses")
    if path:
        # One line per URL; a newline inside one would forge a second (the worker refuses it).
        with open(path, "a", encoding="utf-8", errors="surrogateescape") as misses:
            misses.write(url.replace("\n", "%0A").replace("\r", "%0D") + "\n")


# --- requests ---------------------------------------------------------------------------------


def _patch_requests() -> None:
    try:
        import requests  # optional: a scene environment may lack it
        from requests.adapters import HTTPAdapter
        from requests.structures import CaseInsensitiveDict
        from requests.utils import get_encoding_from_headers
    except ImportError:
        return

    class RequestsAssetNotFetched(AssetNotFetched, requests.exceptions.ConnectionError):
        """Caught by ``except requests.RequestException`` like a network failure."""

        def __init__(self, url: str) -> None:
            AssetNotFetched.__init__(self, url)

    _state["requests_error"] = RequestsAssetNotFetched

    def send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        url = str(request.url)
        if request.method not in ("GET", "HEAD"):
            raise RequestsAssetNotFetched(url)
        body, content_type = lookup(url)
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response.headers = CaseInsensitiveDict(
            {"content-type": content_type, "content-length": str(len(body))}
        )
        response._content = b"" if request.method == "HEAD" else body
        response.encoding = get_encoding_from_headers(response.headers)
        response.url = url
        response.request = request
        response.connection = self
        return response

    HTTPAdapter.send = send  # type: ignore[method-assign]


# --- urllib -------------------------------------------------------------------------------------


class _UrllibAssetNotFetched(AssetNotFetched, urllib.error.URLError):
    def __init__(self, url: str) -> None:
        AssetNotFetched.__init__(self, url)
        self.reason = self.args[0]


class _AssetHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Replaces both http handlers, so ``build_opener`` adds neither of the real ones."""

    def __init__(self) -> None:
        urllib.request.HTTPHandler.__init__(self)

    def _answer(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        url = req.full_url
        try:
            body, content_type = lookup(url)
        except AssetNotFetched:
            raise _UrllibAssetNotFetched(url) from None
        headers = email.message.Message()
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(body))
        response = urllib.response.addinfourl(io.BytesIO(body), headers, url, 200)
        response.msg = "OK"  # type: ignore[attr-defined]  # HTTPErrorProcessor reads it
        return response

    def http_open(self, req: urllib.request.Request) -> Any:
        return self._answer(req)

    def https_open(self, req: urllib.request.Request) -> Any:
        return self._answer(req)


def _patch_urllib() -> None:
    opener = urllib.request.build_opener(_AssetHandler())
    urllib.request.install_opener(opener)

    def urlopen(url: Any, data: Any = None, timeout: Any = None, **_ignored: Any) -> Any:
        # cafile/context would build a fresh opener with the real handlers: ignore them.
        return opener.open(url, data) if timeout is None else opener.open(url, data, timeout)

    urllib.request.urlopen = urlopen


# --- SVG files in read-only places ------------------------------------------------------------


def _patch_read_only_svgs() -> None:
    """manim parses an SVG by writing a modified copy beside it (``<name>_.svg``), which fails
    for the SVGs plugins ship (manim-fontawesome's icons) in the jail's read-only venv: parse
    those from a copy in the scratch /tmp instead."""
    try:
        from manim.mobject.svg.svg_mobject import SVGMobject  # optional: only for manim scenes
    except ImportError:
        return
    original = SVGMobject.generate_mobject

    def generate_mobject(self: Any) -> Any:
        path = self.get_file_path()
        if os.access(path.parent, os.W_OK):
            return original(self)
        with tempfile.TemporaryDirectory(prefix="svg-") as tmp:
            copy = type(path)(tmp) / path.name
            shutil.copyfile(path, copy)
            self.get_file_path = lambda: copy
            try:
                return original(self)
            finally:
                del self.get_file_path

    SVGMobject.generate_mobject = generate_mobject  # type: ignore[method-assign]


def install(
    assets_dir: str = ASSETS_DIR, misses_file: str | None = MISSES_FILE, placeholders: bool = False
) -> None:
    """Answer the scene's web requests from ``assets_dir``; record misses in ``misses_file``
    (and, with ``placeholders``, answer them with a stand-in rather than an error)."""
    _state["dir"] = assets_dir
    _state["placeholders"] = placeholders
    _state["misses"] = os.path.abspath(misses_file) if misses_file else None
    if not _state.get("installed"):
        _state["installed"] = True
        _patch_requests()
        _patch_urllib()
        _patch_read_only_svgs()

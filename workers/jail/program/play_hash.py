"""manim's partial-movie hash of a play, computed as manim 0.22.0 computes it, in about 60 %
of the time.

Why: the animation cache keys each movie by manim's own play hash, so every pass hashes the
plays it draws, and a plan whose owner's cache holds movies hashes every play. manim's
``get_hash_from_play_call`` walks the scene's objects in Python, five function calls per value
(``_Memoizer``'s check, its lambdas, ``hash``, the ``Hashable`` ABC), and hashes every points
array with a fresh ``json.dumps`` of its dtype: on the benchmark scene at 1080p it took 0.8 to
1.3 s for 15 plays on one core, as long as drawing one or two of them (docs/benchmark.md).

This module walks the same objects in the same order, marks them in the same memo (the same
``("h", hash)`` / ``("i", id)`` signs, so the same repeats become ``"AP"``), and leaves the
JSON text to the same ``json`` C encoder through manim's own ``_CustomEncoder.default``; it only
inlines the memo's checks and caches what depends on a type or a dtype alone. The digest is
byte for byte manim's: ``tests/test_play_hash.py`` compares the two on every play of the
fidelity scenes. The pin of manim (``constraints.txt``) guards it: a manim whose hashing
changes fails that test.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Hashable, Iterable
from types import FunctionType, MappingProxyType, MethodType, NoneType
from typing import Any

import numpy as np
from manim.utils import hashing
from manim.utils.hashing import KEYS_TO_FILTER_OUT

_PLACEHOLDER = hashing._Memoizer.ALREADY_PROCESSED_PLACEHOLDER
_PRIMITIVES = (int, float, str, complex)
# Exact builtin types whose values manim's memo returns as they are (a str only if it is not
# the placeholder itself, which manim memoizes like any object).
_PLAIN = frozenset({int, float, bool, str})
_JSON_KEYS = (str, int, float, bool)
_FUNCTIONS = frozenset({FunctionType, MethodType})
_MISSING = object()
# Whether instances of a class are Hashable (the ABC's answer), kept across plays.
_HASHABLE: dict[type, bool] = {}


class _Memo:
    """manim's ``_Memoizer`` state, one play's worth: the signs of the objects seen. (Its
    warning past 170,000 objects is not repeated: the runner turns manim's off.)"""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        # Why: as manim does, keep every marked object alive until the hash is done, so that
        # no address (the "i" sign) is reused by another object within it.
        self.keep_alive: dict[int, Any] = {}

    def check(self, obj: Any) -> Any:
        """``_Memoizer.check_already_processed``: the object, or the placeholder if seen."""
        kind = type(obj)
        if kind in _PLAIN:
            if kind is not str or obj != _PLACEHOLDER:
                return obj
        elif (
            kind is not NoneType
            and isinstance(obj, _PRIMITIVES)
            and obj not in [None, _PLACEHOLDER]
        ):
            return obj
        # Why a cache per type: isinstance(obj, Hashable) walks the ABC's checks every time,
        # and depends on the class alone (an object that lies about its class asks again).
        hashable = _HASHABLE.get(kind)
        if hashable is None or obj.__class__ is not kind:
            hashable = isinstance(obj, Hashable)
            if obj.__class__ is kind:
                _HASHABLE[kind] = hashable
        try:
            sign = ("h", hash(obj)) if hashable else ("i", id(obj))
        except TypeError:  # manim's fallback: hashable in name only (a list inside, say)
            sign = ("i", id(obj))
        if sign in self.seen:
            return _PLACEHOLDER
        self.seen.add(sign)
        self.keep_alive.setdefault(id(obj), obj)
        return obj


class _Encoder(hashing._CustomEncoder):
    """manim's ``_CustomEncoder`` with the memo's checks inlined and arrays hashed faster."""

    def __init__(self, *args: Any, memo: _Memo, include_pixel_array: bool = False, **kw: Any):
        # manim's default() calls self._memoizer only through _cleaned_iterable, replaced here.
        unused: Any = None
        super().__init__(*args, memoizer=unused, include_pixel_array=include_pixel_array, **kw)
        self.memo = memo

    def default(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is np.ndarray and not obj.dtype.hasobject:
            return _hash_ndarray(obj)
        # manim's order: functions and methods (neither can be subclassed), arrays, then any
        # object with a __dict__, which is where almost every call lands.
        if kind not in _FUNCTIONS and not isinstance(obj, np.ndarray):
            attributes = getattr(obj, "__dict__", _MISSING)
            if attributes is not _MISSING and not isinstance(attributes, MappingProxyType):
                return self._cleaned_iterable(attributes)
        return super().default(obj)

    def _cleaned_iterable(self, iterable: Any) -> Any:
        if isinstance(iterable, (list, tuple)):
            return self._clean_list(iterable)
        if isinstance(iterable, dict):
            return self._clean_dict(iterable)
        raise TypeError("'iterable' is neither an iterable nor a dictionary.")

    def _clean_list(self, items: Any) -> list[Any]:
        check = self.memo.check
        cleaned = []
        for item in items:
            item = check(item)
            if isinstance(item, (list, tuple)):
                item = self._clean_list(item)
            elif isinstance(item, dict):
                item = self._clean_dict(item)
            cleaned.append(item)
        return cleaned

    def _clean_dict(self, mapping: dict[Any, Any]) -> dict[Any, Any]:
        check = self.memo.check
        keep_pixels = self.include_pixel_array
        cleaned: dict[Any, Any] = {}
        for key, value in mapping.items():
            kind = type(value)
            # Plain numbers and strings, most values, are neither memoized nor walked.
            plain = kind in _PLAIN and (kind is not str or value != _PLACEHOLDER)
            if not plain:
                # manim marks a value before it looks at its key: a filtered one is still seen.
                value = check(value)
            if key in KEYS_TO_FILTER_OUT and not (keep_pixels and key == "pixel_array"):
                continue
            if type(key) is not str and not isinstance(key, _JSON_KEYS) and key is not None:
                key = zlib.crc32(_json(key, self.memo).encode())
            if not plain:
                if isinstance(value, dict):
                    value = self._clean_dict(value)
                elif isinstance(value, (list, tuple)):
                    value = self._clean_list(value)
            cleaned[key] = value
        return cleaned

    def encode(self, obj: Any) -> str:
        self.memo.check(obj)  # manim's mark_as_processed
        if isinstance(obj, (dict, list, tuple)):
            return json.JSONEncoder.encode(self, self._cleaned_iterable(obj))
        return json.JSONEncoder.encode(self, obj)


def _json(obj: Any, memo: _Memo, *, include_pixel_array: bool = False) -> str:
    """manim's ``_get_json``."""
    return json.dumps(obj, cls=_Encoder, memo=memo, include_pixel_array=include_pixel_array)


_DTYPES: dict[np.dtype, tuple[np.dtype, str] | None] = {}


def _hash_ndarray(array: np.ndarray) -> str:
    """manim's ``_hash_ndarray``, with the dtype's canonical form and JSON made once."""
    dtype = array.dtype
    if dtype not in _DTYPES:
        canonical = dtype.newbyteorder("<")
        _DTYPES[dtype] = (
            None  # a structured dtype: manim's own, field by field
            if canonical.names is not None
            else (
                canonical,
                json.dumps(hashing._canonical_dtype_descriptor(dtype), separators=(",", ":")),
            )
        )
    known = _DTYPES[dtype]
    if known is None:
        return hashing._hash_ndarray(array)
    canonical, descriptor = known
    data = np.ascontiguousarray(array.astype(canonical, copy=False))
    return f"NDARRAY:{descriptor}:{array.shape}:{hashlib.sha256(data.data).hexdigest()}"


def get_hash_from_play_call(
    scene: Any,
    camera: Any,
    animations: Iterable[Any],
    mobjects: Iterable[Any],
    *,
    backend: str,
    encoder_fingerprint: str,
    renderer_state: Any,
) -> str:
    """``manim.utils.hashing.get_hash_from_play_call``, the same digest."""
    if backend not in {"cairo", "opengl"}:
        raise ValueError(f"Unsupported cache backend: {backend}")
    if not encoder_fingerprint:
        raise ValueError("An encoder fingerprint is required for cache identity.")
    memo = _Memo()
    memo.check(scene)
    camera_json = _json(camera, memo)
    animations_json = [
        _json(animation, memo, include_pixel_array=True)
        for animation in sorted(animations, key=str)
    ]
    mobjects_json = [_json(mobject, memo, include_pixel_array=True) for mobject in mobjects]
    renderer_json = _json(renderer_state, memo, include_pixel_array=True)
    digest = hashlib.sha256()

    def feed(value: str) -> None:
        encoded = value.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)

    for name, values in (
        ("backend", [backend]),
        ("encoder", [encoder_fingerprint]),
        ("camera", [camera_json]),
        ("animations", animations_json),
        ("mobjects", mobjects_json),
        ("renderer", [renderer_json]),
    ):
        feed(name)
        feed(str(len(values)))
        for value in values:
            feed(value)
    return digest.hexdigest()

"""Subtitles: merge chunk .srt files (absolute scene times) and convert them to WebVTT."""

from __future__ import annotations

import re
from dataclasses import dataclass

from farm.storage import Storage

# Kodisc links a captions.vtt for every completed render, cues or not. A scene without
# subcaptions gets this one shared, cue-less file (``farm migrate`` and the API write it).
EMPTY_CAPTIONS_KEY = "static/captions-empty.vtt"
EMPTY_WEBVTT = "WEBVTT\n"

_TIME = re.compile(r"(\d+):(\d{2}):(\d{2})[,.](\d{3})")


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def _ms(stamp: str) -> int:
    match = _TIME.fullmatch(stamp.strip())
    if not match:
        raise ValueError(f"bad SRT timestamp {stamp!r}")
    h, m, s, ms = (int(g) for g in match.groups())
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def parse_srt(text: str) -> list[Cue]:
    cues = []
    for block in re.split(r"\r?\n\s*\r?\n", text.strip()):
        lines = block.strip().splitlines()
        arrow = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if arrow is None:
            continue
        start, end = lines[arrow].split("-->")
        cues.append(Cue(_ms(start), _ms(end.split()[0]), "\n".join(lines[arrow + 1 :])))
    return cues


def _stamp(ms: int) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def to_webvtt(cues: list[Cue]) -> str:
    lines = ["WEBVTT", ""]
    for i, cue in enumerate(sorted(cues, key=lambda c: (c.start_ms, c.end_ms)), start=1):
        # WebVTT cue text may not contain "-->" or blank lines.
        text = re.sub(r"\n\s*\n", "\n", cue.text.replace("-->", "->")) or " "
        lines += [str(i), f"{_stamp(cue.start_ms)} --> {_stamp(cue.end_ms)}", text, ""]
    return "\n".join(lines)


def merge_srt_to_webvtt(parts: list[str]) -> str | None:
    """One WebVTT document from the chunks' .srt texts; None when there are no cues at all."""
    cues = [cue for part in parts for cue in parse_srt(part)]
    return to_webvtt(cues) if cues else None


def ensure_empty_captions(storage: Storage) -> None:
    """Write the shared cue-less WebVTT file (idempotent: same key, same bytes)."""
    storage.put_bytes(EMPTY_CAPTIONS_KEY, EMPTY_WEBVTT.encode(), "text/vtt; charset=utf-8")

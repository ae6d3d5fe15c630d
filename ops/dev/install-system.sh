#!/usr/bin/env bash
# Installs the Debian packages the farm needs on a developer or CI machine.
# Idempotent: apt-get skips what is already installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  ffmpeg libcairo2-dev libpango1.0-dev pkg-config   # manim's cairo renderer and encoder
  libegl1 libgl1-mesa-dri                           # manim's OpenGL renderer, headless (Mesa)
  texlive-latex-base texlive-latex-extra texlive-fonts-recommended texlive-science dvisvgm cm-super-minimal
  bubblewrap                                        # the render sandbox
  prometheus                                        # real scrapes in the observability tests, promtool
  chromium                                          # the playground's browser test
  python3-venv python3-dev                          # the venv: a Python the sandbox uid can read
  curl procps psmisc
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The CPU worker image: `farm worker` with manim's Cairo renderer, LaTeX, ffmpeg and bubblewrap
# (the render sandbox). Mesa's EGL is included so `--renderer opengl` also works on CPU (llvmpipe).
# Build from the repository root:
#   docker build -f ops/docker/worker.Dockerfile -t manim-render-farm/worker:0.1.0 .

# ---- build: compilers and -dev headers live only here ---------------------------------
FROM python:3.11.14-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libcairo2-dev libpango1.0-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# ---- runtime: no compilers, non-root ------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini reaps the sandboxed render processes and forwards SIGTERM so Celery shuts down warm.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ffmpeg libcairo2 libpango-1.0-0 libpangocairo-1.0-0 \
      texlive-latex-base texlive-latex-extra texlive-fonts-recommended texlive-science \
      dvisvgm cm-super-minimal \
      bubblewrap \
      libegl1 libgl1-mesa-dri \
      tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 farm \
 && useradd --system --uid 10001 --gid farm --home-dir /home/farm --create-home --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm /var/lib/farm/prometheus /var/lib/farm/scratch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/farm \
    TMPDIR=/var/lib/farm/scratch \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/farm/prometheus
USER 10001:10001
WORKDIR /home/farm
EXPOSE 9101
ENTRYPOINT ["tini", "--", "farm"]
CMD ["worker", "--queues", "render.low,render.medium", "--concurrency", "2", "--renderer", "cairo"]

# One Dockerfile, three images (targets). Build from the repository root:
#   docker build --target api        -t manim-render-farm/api:0.1.0 .         farm api|scheduler|migrate
#   docker build --target worker     -t manim-render-farm/worker:0.1.0 .      farm worker (CPU)
#   docker build --target worker-gpu -t manim-render-farm/worker-gpu:0.1.0 .  farm worker --renderer opengl
# Every pip install uses constraints.txt, the one lock shared with the venv and CI.

# ---- build-api: the server without manim (no compilers needed) --------------------------
FROM python:3.11.14-slim-bookworm AS build-api
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir -c constraints.txt ./client . \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# ---- build-render: adds the [render] extra; compilers and -dev headers live only here ------
FROM build-api AS build-render
# pycairo (a manim dependency) builds from source against cairo; pango for ManimPango's fallback.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libcairo2-dev libpango1.0-dev \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir -c constraints.txt './client' '.[render]' \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
# The scene plugins (docs/plugins.md): pinned, --no-deps because some declare pins manim 0.22
# contradicts although they work with it. `--build-arg PLUGINS=my-plugins.txt` changes the set.
ARG PLUGINS=ops/plugins.txt
RUN pip install --no-cache-dir --no-deps -c constraints.txt -r "$PLUGINS" \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# ---- runtime: what every image runs on; no compilers (each target ends as the non-root user) --
FROM python:3.11.14-slim-bookworm AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini reaps children (gunicorn workers, sandboxed renders) and forwards SIGTERM.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 farm \
 && useradd --system --uid 10001 --gid farm --home-dir /home/farm --create-home --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm /var/lib/farm/prometheus /var/lib/farm/scratch
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/farm \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/farm/prometheus
WORKDIR /home/farm
ENTRYPOINT ["tini", "--", "farm"]

# ---- api: `farm api` (gunicorn in-process), `farm scheduler` and `farm migrate` -------------
FROM runtime AS api
COPY --from=build-api /opt/venv /opt/venv
# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000 9102
CMD ["api", "--bind", "0.0.0.0:8000", "--workers", "2"]

# ---- render-runtime: what manim and the sandbox need at run time ----------------------------
FROM runtime AS render-runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ffmpeg libcairo2 libpango-1.0-0 libpangocairo-1.0-0 \
      texlive-latex-base texlive-latex-extra texlive-fonts-recommended texlive-science \
      dvisvgm cm-super-minimal \
      bubblewrap \
 && fc-cache --system-only \
 && rm -rf /var/lib/apt/lists/*
# fontconfig's system cache (/var/cache/fontconfig) is bound into every render jail: without it
# each jail's first Text() scans the fonts again.
COPY --from=build-render /opt/venv /opt/venv
ENV TMPDIR=/var/lib/farm/scratch
EXPOSE 9101

# ---- worker: CPU; Mesa's EGL so `--renderer opengl` also works on CPU (llvmpipe) ------------
FROM render-runtime AS worker
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
CMD ["worker", "--queues", "render.low,render.medium", "--concurrency", "2", "--renderer", "cairo"]

# ---- worker-gpu: `--renderer opengl` on NVIDIA nodes, headless through EGL -------------------
# The NVIDIA container toolkit mounts the driver's libEGL_nvidia into the container when
# NVIDIA_DRIVER_CAPABILITIES includes `graphics`; the image only needs libglvnd (the EGL
# dispatcher: libegl1/libgl1/libgles2, no Mesa drivers) and the vendor file that points it at
# NVIDIA (what nvidia/opengl's glvnd images carry). nvidia/cuda's Ubuntu bases ship another
# Python and nothing here needs CUDA.
FROM render-runtime AS worker-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglvnd0 libegl1 libgl1 libgles2 \
 && rm -rf /var/lib/apt/lists/*
COPY ops/docker/10_nvidia.json /usr/share/glvnd/egl_vendor.d/10_nvidia.json
# The GPUs a pod sees are set per pod by the device plugin, not here (`all` would expose every
# GPU of the node under the legacy toolkit).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics,video
USER 10001:10001
CMD ["worker", "--queues", "render.fourk", "--concurrency", "1", "--renderer", "opengl"]

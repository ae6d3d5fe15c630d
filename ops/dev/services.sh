#!/usr/bin/env bash
# Starts whatever of PostgreSQL, Redis and the local S3 is not already reachable.
# Commands for PostgreSQL and Redis are Debian's (as on the dev/CI machines).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "postgres: starting"
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get install -y -qq postgresql >/dev/null
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
fi
echo "postgres: up"

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "redis: starting"
  command -v redis-server >/dev/null || apt-get install -y -qq redis-server >/dev/null
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
echo "redis: up"

"$here/s3.sh" start

#!/bin/sh
# Start a throwaway redis-server on the configured port unless one answers there.
set -eu
url="${NEARCAST_REDIS_URL:-redis://127.0.0.1:6379/0}"
hostport="${url#redis://}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379
if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
    exit 0
fi
echo "nearcast: starting redis-server on $host:$port"
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
    --logfile "${TMPDIR:-/tmp}/nearcast-redis-$port.log"
i=0
until redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && { echo "nearcast: redis-server did not come up" >&2; exit 1; }
    sleep 0.1
done

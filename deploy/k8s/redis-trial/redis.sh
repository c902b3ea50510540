#!/bin/sh
# The trial Redis of deploy/k8s/redis-trial. Its password is the one in the url of
# Secret nearcast-redis, which placement connects with: the two cannot drift apart.
#   redis.sh server    redis-server with that requirepass (the container's command)
#   redis.sh ping      exit 0 when an authenticated PING answers PONG (the probe)
set -eu
url="${REDIS_URL:-}"
case "$url" in
    redis://:?*@nearcast-redis:6379/*) ;;
    *)
        echo "redis-trial: the url in Secret nearcast-redis must be" \
            "redis://:PASSWORD@nearcast-redis:6379/0 for the trial Redis" >&2
        exit 2
        ;;
esac
password="${url#redis://:}"
password="${password%@nearcast-redis:6379/*}"
case "$password" in
    *[!A-Za-z0-9._~-]*)
        echo "redis-trial: the password in Secret nearcast-redis's url must be URL-safe" \
            "(letters, digits, '._~-'; e.g. openssl rand -hex 32)" >&2
        exit 2
        ;;
esac
# redis-cli reads it from here, not from its command line.
export REDISCLI_AUTH="$password"
case "${1:-}" in
    server)
        # The registry holds the active policy and live sessions: an append-only file
        # keeps them across restarts.
        exec redis-server --appendonly yes --save '' --dir /data --requirepass "$password"
        ;;
    ping)
        [ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]
        ;;
    *)
        echo "usage: redis.sh server|ping" >&2
        exit 2
        ;;
esac

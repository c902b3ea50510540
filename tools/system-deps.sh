#!/bin/sh
# Make sure the independent clients the test suite drives are installed:
# Debian's ffmpeg CLI, Chromium for hls.js playback, and redis-server.
set -eu
missing=""
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nearcast: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "nearcast: please install these packages first:$missing" >&2
    echo "  (Debian/Ubuntu: sudo apt-get install$missing)" >&2
    exit 1
fi

#!/bin/sh
# Make sure the independent clients the test suite and benchmarks drive are
# installed: Debian's ffmpeg CLI, Chromium for hls.js playback, redis-server,
# nginx plus wrk as the fan-out reference, GStreamer, and coturn (turnserver) as the
# TURN server WebRTC viewers relay through, and Prometheus to scrape a test fleet.
set -eu
missing=""
for pair in ffmpeg:ffmpeg chromium:chromium redis-server:redis-server nginx:nginx-light wrk:wrk \
    turnserver:coturn prometheus:prometheus; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $pkg"
done
# GStreamer, the second independent RTMP publisher and HLS player: its elements come
# from several packages, so each element the tests use is looked for.
gst="gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
gst="$gst gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
for element in rtmp2sink hlsdemux2 x264enc avenc_aac avdec_h264 playbin3; do
    if ! gst-inspect-1.0 --exists "$element" >/dev/null 2>&1; then
        missing="$missing $gst"
        break
    fi
done
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

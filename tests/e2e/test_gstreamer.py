"""GStreamer, an independent RTMP and HLS implementation, against a real node.

``rtmp2sink`` publishes an H.264/AAC stream the node transcodes; ``playbin3`` (with
``hlsdemux2``, GStreamer's LL-HLS- and CMAF-capable demuxer) plays the node's default
delivery, and a transcoded MPEG-TS tenant too, decoding a fixed number of frames to the
end of stream. ``playbin3``, not ``playbin``: gst-launch pauses a pipeline while it
buffers, and the older playbin keeps re-buffering a live playlist towards a target far
beyond its live edge, so it never plays through. Both sides are GStreamer's own code,
independent of FFmpeg, hls.js and Shaka Player.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest
from nodeutil import SMALL_LADDER, NodeProcess, require_binary, segment_numbers, wait_for

pytestmark = pytest.mark.slow
# Frames playbin must decode before its end-of-stream: about 3 s at 30 fps.
FRAMES = 90
# Audio buffers likewise: AAC frames of 1024 samples at 48 kHz, about 2 s.
AUDIO_BUFFERS = 90


def gst(
    *pipeline: str, timeout: float, diagnose: Callable[[], str] = lambda: ""
) -> subprocess.CompletedProcess[str]:
    """Run ``gst-launch-1.0 -e PIPELINE`` to its end of stream, within ``timeout``.

    Past it, the failure names the streams playbin3 selected, the last buffering levels,
    the end of GStreamer's own HLS log (what its demuxer fetched and decided), and what
    ``diagnose`` says of the server (its playlist and log), so a timeout tells which side
    stopped."""
    exe = require_binary("gst-launch-1.0")
    env = {
        **os.environ,
        "GST_DEBUG": os.environ.get("GST_DEBUG", "hlsdemux2:5,adaptivedemux2:4"),
        "GST_DEBUG_NO_COLOR": "1",
    }
    try:
        return subprocess.run(
            [exe, "-e", "-m", *pipeline],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        lines = out.replace("\r", "\n").splitlines()
        selected = [line[:300] for line in lines if "streams-selected" in line][-3:]
        eos = [line[:200] for line in lines if "eos" in line.lower()][-5:]
        levels = [line.strip() for line in lines if line.startswith("buffering...")][-20:]
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        demux = "\n".join(line[:300] for line in err.splitlines()[-60:])
        pytest.fail(
            f"gst-launch-1.0 {' '.join(pipeline)} ran past {timeout:g} s\n"
            f"selected: {selected}\nend of stream: {eos}\nbuffering: {levels}\n"
            f"GStreamer's HLS log, its end:\n{demux}\n{diagnose()}"
        )


def publish_args(url: str, seconds: int) -> list[str]:
    """A live 640x360 test picture and tone, H.264 (2 s GOP) and AAC in FLV over RTMP."""
    frames = seconds * 30
    return [
        *("videotestsrc", "is-live=true", f"num-buffers={frames}", "pattern=ball", "!"),
        *("video/x-raw,width=640,height=360,framerate=30/1", "!"),
        *("x264enc", "tune=zerolatency", "speed-preset=veryfast", "key-int-max=60"),
        *("bitrate=800", "!", "h264parse", "!", "flvmux", "name=m", "streamable=true", "!"),
        *("rtmp2sink", f"location={url}"),
        *("audiotestsrc", "is-live=true", f"num-buffers={seconds * 47}", "!"),
        *("audioconvert", "!", "avenc_aac", "!", "aacparse", "!", "m."),
    ]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    for element in ("rtmp2sink", "hlsdemux2", "x264enc", "avdec_h264"):
        out = subprocess.run(
            [require_binary("gst-inspect-1.0"), element], capture_output=True, check=False
        )
        if out.returncode:
            pytest.fail(f"GStreamer element {element} is missing; `make test` installs it")
    node = NodeProcess(
        tmp_path_factory.mktemp("gst") / "node.log",
        NEARCAST_TRANSCODE_LADDER=SMALL_LADDER,
        NEARCAST_RTMP_TENANTS="[live, ts]",
        NEARCAST_HLS_TENANTS="{ts: ts}",
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def published(node: NodeProcess) -> Iterator[None]:
    """GStreamer publishes to live/gst and ts/gst for long enough for both players."""
    exe = require_binary("gst-launch-1.0")
    procs = [
        subprocess.Popen(
            # Long enough for every test of the module on a loaded machine: the fixture
            # stops them when the module is done.
            [exe, "-e", *publish_args(node.rtmp(f"{tenant}/gst"), 600)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tenant in ("live", "ts")
    ]
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def diagnose(node: NodeProcess, tenant: str) -> str:
    """The node's side of a failed playback: the lowest rung's playlist and the log's end."""
    playlist = node.get(f"/{tenant}/gst/180p/index.m3u8").text
    log = node.log_path.read_text(errors="replace")[-3000:]
    return f"180p playlist:\n{playlist[-1500:]}\nnode log:\n{log}"


def listed(node: NodeProcess, path: str, segments: int) -> bool:
    r = node.get(path)
    return r.status_code == 200 and len(segment_numbers(r.text)) >= segments


def test_gstreamer_rtmp2sink_publish_is_transcoded_into_the_ladder(
    node: NodeProcess, published: None
) -> None:
    for rendition in ("360p", "240p", "180p"):
        wait_for(
            lambda r=rendition: listed(node, f"/live/gst/{r}/index.m3u8", 2),
            60,
            f"two {rendition} segments of GStreamer's publish",
        )
    assert node.metric("ingest_rejected_total") == 0


@pytest.mark.parametrize("tenant", ["live", "ts"])
def test_gstreamer_playbin3_decodes_the_nodes_hls(
    node: NodeProcess, published: None, tenant: str
) -> None:
    """LL-HLS with CMAF parts (the default) and MPEG-TS: playbin3 decodes FRAMES frames
    and reaches its end of stream without an error."""
    wait_for(
        lambda: listed(node, f"/{tenant}/gst/180p/index.m3u8", 2),
        60,
        f"two segments of {tenant}/gst",
    )
    # The pipeline ends when every sink has had its end of stream: both count buffers.
    out = gst(
        "playbin3",
        f"uri={node.http}/{tenant}/gst/index.m3u8",
        f"video-sink=identity eos-after={FRAMES} ! fakesink sync=true",
        f"audio-sink=identity eos-after={AUDIO_BUFFERS} ! fakesink sync=true",
        timeout=60,
        diagnose=lambda: diagnose(node, tenant),
    )
    log = out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 0, log
    assert "ERROR" not in out.stdout, log
    assert 'Got EOS from element "playbin3' in out.stdout, log

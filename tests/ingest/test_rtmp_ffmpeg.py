"""The RTMP core against a real client: PyAV's bundled FFmpeg publishing over TCP.

A throwaway blocking socket loop stands in for the asyncio adapter, so this test
proves the protocol core alone against rtmpproto.c. The publisher runs in a child
process, not a thread: PyAV opens the output on the first ``mux()`` and holds the
GIL through FFmpeg's blocking RTMP handshake, which would starve a server thread.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from ingest.rtmp.session import (
    ConnectRequested,
    MediaReceived,
    MetadataReceived,
    PublishRequested,
    PublishStopped,
    ServerSession,
)
from media.model import MediaPacket

_HERE = pathlib.Path(__file__).resolve().parent
_PATH_SETUP = f"import sys; sys.path[:0] = [{str(_HERE)!r}, {str(_HERE.parents[2])!r}]; "


def _publish(url: str) -> None:
    with av.open(url, "w", format="flv", timeout=(10, 10)) as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10"}
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        samples = 1024
        t = np.arange(samples * 44) / 44100.0
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(25):
            img = np.full((240, 320, 3), (i * 9) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 25)
            container.mux(video.encode(frame))
        for j in range(44):
            chunk = np.stack([tone[j * samples : (j + 1) * samples]] * 2)
            aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            aframe.sample_rate = 44100
            aframe.pts = j * samples
            aframe.time_base = Fraction(1, 44100)
            container.mux(audio.encode(aframe))
        container.mux(video.encode())
        container.mux(audio.encode())


def test_ffmpeg_publisher_end_to_end() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    url = f"rtmp://127.0.0.1:{port}/live/test?token=abc"
    client = subprocess.Popen(
        [sys.executable, "-c", f"{_PATH_SETUP}import test_rtmp_ffmpeg as t; t._publish({url!r})"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    session = ServerSession(chunk_size=4096)
    events: list[object] = []
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            while True:
                try:
                    data = conn.recv(65536)
                except ConnectionResetError:
                    # FFmpeg closes with unread acks in its buffer, which the kernel turns
                    # into a reset instead of a FIN: the same end of stream.
                    break
                if not data:
                    break
                for event in session.receive_data(data):
                    events.append(event)
                    if isinstance(event, ConnectRequested):
                        session.accept_connect()
                    elif isinstance(event, PublishRequested):
                        session.accept_publish(event.stream_id)
                out = session.data_to_send()
                if out:
                    conn.sendall(out)
    finally:
        listener.close()
        try:
            output, _ = client.communicate(timeout=30)
        finally:
            client.kill()
    assert client.returncode == 0, output.decode(errors="replace")

    connect = next(e for e in events if isinstance(e, ConnectRequested))
    assert connect.app == "live"
    assert connect.tc_url == f"rtmp://127.0.0.1:{port}/live"
    publish = next(e for e in events if isinstance(e, PublishRequested))
    assert (publish.name, publish.query, publish.publish_type) == ("test", "token=abc", "live")
    assert any(isinstance(e, MetadataReceived) for e in events)
    assert any(isinstance(e, PublishStopped) for e in events)

    packets: list[MediaPacket] = [e.packet for e in events if isinstance(e, MediaReceived)]
    video = [p for p in packets if p.kind == "video"]
    audio = [p for p in packets if p.kind == "audio"]
    assert video[0].codec == "h264" and video[0].config
    assert video[0].data[0] == 1  # AVCDecoderConfigurationRecord version
    frames = [p for p in video if not p.config]
    assert len(frames) == 25
    assert frames[0].keyframe and sum(p.keyframe for p in frames) >= 2
    assert audio[0].codec == "aac" and audio[0].config and len(audio[0].data) >= 2
    assert len([p for p in audio if not p.config]) >= 40
    for stream in (video, audio):
        dts = [p.dts for p in stream]
        assert dts == sorted(dts)
    assert all(p.pts >= p.dts for p in frames)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])

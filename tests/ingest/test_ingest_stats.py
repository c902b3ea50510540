"""Per-publish measurements (ingest.stats) and the RTMP status code of each refusal."""

from __future__ import annotations

import pytest

from ingest.rtmp.server import BAD_NAME, REFUSED, UNAUTHORIZED, refusal_code
from ingest.stats import IngestStats
from media import MediaPacket


def _video(dts: int, key: bool = False, size: int = 1000) -> MediaPacket:
    return MediaPacket("video", "h264", dts, dts, bytes(size), keyframe=key)


def test_rates_keyframe_interval_and_late_packets() -> None:
    st = IngestStats("rtmp", "127.0.0.1:5000", now=100.0)
    st.add(MediaPacket("video", "h264", 0, 0, b"cfg", config=True), 100.0)
    st.add(MediaPacket("audio", "aac", 0, 0, b"c", config=True), 100.0)
    # 10 s of 25 fps video, 1000 bytes a frame (200 kbit/s), keyframe every 2 s.
    for i in range(250):
        st.add(_video(i * 40, key=i % 50 == 0), 100.0 + i * 0.04)
    now = 110.0
    assert st.fps(now) == pytest.approx(25, abs=0.5)
    assert st.bitrate(now) == pytest.approx(200_000, rel=0.03)
    assert st.bitrate(now, window=2.0) == pytest.approx(200_000, rel=0.06)
    assert st.keyframe_interval == 2.0
    assert st.late == 0
    assert not st.add(_video(9000), now)  # DTS back by 0.96 s: late, to be dropped
    assert not st.add(MediaPacket("video", "h264", 0, 9950, b""), now)
    assert st.add(MediaPacket("audio", "aac", 0, 100, b"x"), now)  # kinds are separate
    assert st.add(_video(100), now)  # back by 9.9 s: the publisher restarted its clock
    assert st.add(_video(140), now)
    d = st.describe(now)
    assert d["late_packets"] == 2 and d["timestamp_resets"] == 1
    assert d["video_codec"] == "h264" and d["audio_codec"] == "aac"
    assert d["protocol"] == "rtmp" and d["client"] == "127.0.0.1:5000" and d["uptime"] == 10.0
    # Nothing received for 6 s: the 5 s window is empty.
    assert st.fps(now + 6) == 0 and st.bitrate(now + 6) == 0


def test_rates_early_on_use_the_time_since_the_start() -> None:
    st = IngestStats("rtmps", "x", now=0.0)
    for i in range(30):
        st.add(_video(i * 33, size=500), i / 30)
    assert st.fps(1.0) == pytest.approx(30, rel=0.1)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("duplicate", BAD_NAME),
        ("name", BAD_NAME),
        ("token_missing", UNAUTHORIZED),
        ("token_expired", UNAUTHORIZED),
        ("webhook_denied", UNAUTHORIZED),
        ("webhook_timeout", UNAUTHORIZED),
        ("limit_node", REFUSED),
        ("limit_tenant", REFUSED),
        ("capacity", REFUSED),
    ],
)
def test_refusal_codes(reason: str, code: str) -> None:
    assert refusal_code(reason) == code

"""What the node reports to placement: its descriptor and its measured load (CPU,
transcodes, egress, viewers), and the placement session ids of the streams it holds.

The node's placement agent (placement.agent.NodeAgent) sends these on each heartbeat.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from distribute.media_metrics import MediaMetrics
from media import StreamKey

if TYPE_CHECKING:
    from nearcast.node import Node


class PlacementReport:
    """What the placement agent tells the fleet about this node: its descriptor and load.

    Everything here reads state the node already keeps (no I/O on the media path).
    """

    def __init__(self, node: Node, host: str) -> None:
        self.node = node
        self.agent: Any = None
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.host = f"[{shown}]" if ":" in shown else shown
        self._cpu = _CpuMeter()
        # (when, HLS bytes sent, segments fetched, parts fetched) at the last measure.
        self._last = (time.monotonic(), *_hls_totals(node.media_app.metrics))
        self._egress_mbps = 0.0
        self._hls_viewers = 0
        # Placement session ids of streams whose publisher has gone, kept through the grace
        # period (the stream may come back), keyed by stream.
        self._ids: dict[StreamKey, str] = {}

    def descriptor(self) -> Any:
        from placement import model as pm

        n = self.node.config.node
        rtmp = n.public_rtmp or f"rtmp://{self.host}:{self.node.rtmp_port}"
        http = n.public_http or (
            f"http://{self.host}:{self.node.http_port}"
            if self.node.http_port
            else f"https://{self.host}:{self.node.https_port}"
        )
        total = self.node.capacity.total
        labels = dict(n.labels)
        if self.node.config.relay.enabled:
            # Placement may send viewers here for streams held elsewhere (core.route) and
            # name this node as an upstream that can relay (core.upstream).
            labels["relay"] = "on"
        return pm.Node(
            id=n.id,
            tier=pm.Tier(n.tier),
            region=n.region,
            city=n.city,
            isp=n.isp,
            lat=n.lat,
            lon=n.lon,
            urls=pm.Urls(rtmp=rtmp.rstrip("/"), http=http.rstrip("/"), whip=http.rstrip("/")),
            # Ladder units as slots: the measured (or configured) transcode capacity; 1
            # while it is still being measured, or when it is unknown (0: admit everything).
            capacity=pm.Capacity(
                slots=max(1, int(total)), egress_mbps=n.egress_mbps, viewers=n.max_viewers
            ),
            labels=labels,
        )

    def sessions(self) -> list[str]:
        """Placement session ids of the streams held, whose leases each beat renews.

        A publisher names its session with ``?session=ID`` on the ingest URL (RTMP stream
        key or WHIP URL); the id stays renewed through the grace period after it leaves.
        """
        from ingest.rtmp.server import parse_query

        live: dict[StreamKey, str] = {}
        for key, sess in self.node.sessions.items():
            sid = parse_query(sess.request.query).get("session")
            if sid:
                live[key] = sid
        for key in list(self._ids):
            if key not in live and key not in self.node._grace:
                del self._ids[key]
        self._ids.update(live)
        return sorted(set(self._ids.values()))

    def load(self) -> Any:
        """The node's real load, measured since the previous beat."""
        from placement import model as pm

        node = self.node
        if self.agent is not None:
            # Capacity is measured after start (calibration): re-send the descriptor.
            self.agent.update(self.descriptor())
        now = time.monotonic()
        metrics = node.media_app.metrics
        t0, sent0, seg0, part0 = self._last
        if now - t0 >= 0.5:
            sent, seg, part = _hls_totals(metrics)
            self._last = (now, sent, seg, part)
            hls_mbps = (sent - sent0) * 8 / (now - t0) / 1e6
            # HLS viewers are not tracked per client (the fast path keeps no per-client
            # state): estimate them from the fetch rate, a player fetching one segment per
            # segment duration (or one part per part duration with LL-HLS).
            hc = node.config.hls
            by_seg = (seg - seg0) / (now - t0) * hc.segment_duration
            by_part = (part - part0) / (now - t0) * hc.part_duration  # LL-HLS streams only
            self._hls_viewers = round(max(by_seg, by_part))
            # WHEP bytes are not counted per packet: estimate each WHEP viewer's egress as
            # its stream's ingest bit rate (what the tap rendition is at most).
            whep_bps = 0.0
            for w in list(node.whep.sessions.values()):
                if not w.closed:
                    s = node.sessions.get(w.key)
                    if s is not None:
                        whep_bps += s.ingest.bitrate(now)
            self._egress_mbps = hls_mbps + whep_bps / 1e6
        whep_viewers = sum(1 for w in list(node.whep.sessions.values()) if not w.closed)
        return pm.Load(
            cpu=self._cpu.read(),
            # Streams encoding a ladder; passthrough (over capacity, or a copy-only
            # profile) costs no transcode slot.
            transcodes=sum(1 for s in node.sessions.values() if s.units > 0 and not s.closed),
            egress_mbps=round(self._egress_mbps, 3),
            viewers=whep_viewers + self._hls_viewers,
        )


def _hls_totals(metrics: MediaMetrics) -> tuple[int, int, int]:
    """HLS media bytes sent, and the segments and parts served, since the node started."""
    seg = part = 0
    for (kind, status), n in list(metrics.counts.items()):
        if status < 400:
            seg += n if kind == "segment" else 0
            part += n if kind == "part" else 0
    return metrics.sent, seg, part


class _CpuMeter:
    """Share of the machine's CPU in use (0-1) since the previous read, from /proc/stat:
    transcode workers, the node and anything else on the host. Falls back to the 1-minute
    load average per core where /proc is not available."""

    def __init__(self) -> None:
        self._last = self._times()
        self._value = 0.0

    @staticmethod
    def _times() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # guest time is already counted in user

    def read(self) -> float:
        now = self._times()
        if now is None or self._last is None:
            try:
                return min(1.5, os.getloadavg()[0] / (os.cpu_count() or 1))
            except OSError:
                return 0.0
        total, idle = now[0] - self._last[0], now[1] - self._last[1]
        if total > 0:
            self._value = min(1.0, max(0.0, 1.0 - idle / total))
            self._last = now
        return self._value

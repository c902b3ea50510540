"""The node's configuration: one annotated ``nearcast.yml`` (STYLE rule 5).

The built-in defaults are the dataclass defaults of each stage's section; the
shipped ``nearcast.yml`` states the same values with a comment on every key,
and ``tests/nearcast/test_config.py`` proves the two agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distribute.config import HlsConfig, HttpConfig, PlaybackConfig, RecordConfig
from distribute.relay.config import RelayConfig
from distribute.whep.config import WebRtcConfig
from ingest.config import IngestConfig, RtmpConfig
from ingest.whip.config import WhipConfig
from placement.config import PlacementConfig
from settings import ConfigError, apply_env, build, check, load_yaml
from transcode.config import TranscodeConfig

__all__ = ["Config", "ConfigError", "NodeSection", "RedisConfig", "load", "SHIPPED_CONFIG"]

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "nearcast.yml"


@dataclass(frozen=True)
class NodeSection:
    id: str = "edge-local"
    tier: str = "edge"
    region: str = "local"
    city: str = "local"
    isp: str = "local"
    lat: float = 0.0
    lon: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    public_rtmp: str = ""
    public_http: str = ""
    egress_mbps: float = 1000.0
    max_viewers: int = 1000
    log_level: str = "INFO"
    log_format: str = "text"
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        check(bool(self.id), "id", "must not be empty")
        check(-90 <= self.lat <= 90, "lat", "must be between -90 and 90")
        check(-180 <= self.lon <= 180, "lon", "must be between -180 and 180")
        check(
            all(isinstance(k, str) and k and isinstance(v, str) for k, v in self.labels.items()),
            "labels",
            "must map non-empty names to strings",
        )
        check(
            self.public_rtmp == "" or self.public_rtmp.startswith(("rtmp://", "rtmps://")),
            "public_rtmp",
            "must be empty or an rtmp(s):// URL",
        )
        check(
            self.public_http == "" or self.public_http.startswith(("http://", "https://")),
            "public_http",
            "must be empty or an http(s):// URL",
        )
        check(self.egress_mbps > 0, "egress_mbps", "must be positive")
        check(self.max_viewers > 0, "max_viewers", "must be positive")
        check(self.tier in ("edge", "mec", "cloud"), "tier", "must be edge, mec or cloud")
        check(
            self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log_level",
            "must be DEBUG, INFO, WARNING or ERROR",
        )
        check(self.log_format in ("text", "json"), "log_format", "must be text or json")
        check(self.event_loop in ("uvloop", "asyncio"), "event_loop", "must be uvloop or asyncio")


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    hls: HlsConfig = field(default_factory=HlsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    whip: WhipConfig = field(default_factory=WhipConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or ``$NEARCAST_CONFIG``, or built-in defaults) plus env overrides."""
    env = os.environ if environ is None else environ
    path = path or env.get("NEARCAST_CONFIG") or None
    data = load_yaml(path) if path else {}
    return build(Config, apply_env(Config, data, env))


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        raise ConfigError(f"{value!r} is not HOST:PORT") from None

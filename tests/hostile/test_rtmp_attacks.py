"""RTMP attacks from the open internet against a node serving a class.

Refusals: a protocol violation ends the connection (counted as ``protocol``), a peer
that costs more than its parse budget is cut (``parse_budget``), connections over
``rtmp.max_connections_per_ip`` (16) are reset before a byte is read
(``connections``), and a connection that never gets to publish is closed at
``rtmp.handshake_timeout`` (``handshake_timeout``).
"""

from __future__ import annotations

from functools import partial

from hostileutil import attack

from bench import attacks
from bench.attacks import Stage

# The class's own publisher holds one of the 16 connections loopback may open.
PER_IP = 16 - 1


def test_16mib_amf0_command(stage: Stage) -> None:
    attack(
        stage,
        "16 MiB AMF0 command after the handshake",
        attacks.amf_connect_16mib,
        told=lambda seen: seen["closed"] + seen["reset"] == 1,
        counted=lambda r: r.refused() == {"protocol": 1},
    )


def test_one_byte_chunks(stage: Stage) -> None:
    attack(
        stage,
        "Set Chunk Size 1",
        attacks.one_byte_chunks,
        told=lambda seen: seen["closed"] + seen["reset"] == 1,
        counted=lambda r: r.refused() == {"protocol": 1},
    )


def test_null_commands(stage: Stage) -> None:
    attack(
        stage,
        "200 x 64 KiB AMF null commands",
        attacks.null_commands,
        told=lambda seen: seen["closed"] + seen["reset"] == 1,
        counted=lambda r: r.refused() == {"parse_budget": 1},
    )


def test_500_connections_that_never_read(stage: Stage) -> None:
    """Over the per-IP cap they are reset at once; the 15 taken are dropped at
    rtmp.handshake_timeout (10 s) with their replies unread, and their descriptors go
    with them (the attacker cannot tell: the node's FIN queues behind unread bytes)."""
    result = attack(
        stage,
        "500 connections that never read",
        partial(attacks.never_read, count=500, hold=14.0),
        # Refused connections are reset or closed (FIN), as the kernel's timing has it.
        told=lambda seen: seen["reset"] + seen["closed"] >= 500 - PER_IP and seen.total() == 500,
        counted=lambda r: r.refused() == {"connections": 500 - PER_IP, "handshake_timeout": PER_IP},
    )
    assert result.fd_growth < PER_IP, result


def test_200_publishes_to_random_names(stage: Stage) -> None:
    """From one address the per-IP connection cap (16) bites long before
    ingest.max_publishers (32): 15 publishes start, the other 185 are reset."""
    attack(
        stage,
        "200 publishes to random names",
        attacks.random_publishes,
        told=lambda seen: (
            seen["NetStream.Publish.Start"] <= PER_IP
            and seen["reset"] + seen["closed"] >= 200 - PER_IP
            and seen.total() == 200
        ),
        counted=lambda r: r.refused().get("connections", 0) >= 200 - PER_IP,
    )


def test_xss_and_dot_names(stage: Stage) -> None:
    attack(
        stage,
        "publish to <img src=x onerror=alert(1)>, .. and .",
        attacks.bad_names,
        told=lambda seen: seen == {"NetStream.Publish.BadName": len(attacks.BAD_NAMES)},
        counted=lambda r: r.refused() == {"name": len(attacks.BAD_NAMES)},
    )


def test_publish_rate_per_ip(stage: Stage) -> None:
    """60 publishes in a row from one address, each closed at once: beyond the per-IP
    publish rate (ingest.max_publish_attempts_per_ip) they are refused
    (NetStream.Publish.Rejected), counted as ``publish_rate``."""

    def burst(node: attacks.NodeSubprocess) -> attacks.Outcome:
        return attacks.Counter(attacks.publish_status(node, f"r{i}") for i in range(60))

    attack(
        stage,
        "60 publishes in a row",
        burst,
        told=lambda seen: seen["NetStream.Publish.Rejected"] > 0,
        counted=lambda r: (
            r.refused().get("publish_rate", 0) == r.outcome["NetStream.Publish.Rejected"]
        ),
    )

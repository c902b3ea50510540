"""A nearcast node's init container and preStop hook in Kubernetes.

``python node_hooks.py init`` runs in the node pod's init container. The downward API
gives a pod its own labels, never its host's, so this reads the Kubernetes Node the
pod runs on and turns its ``nearcast.io/*`` labels and annotations into the node's
settings: ``node.id`` (the Kubernetes node name), region, city, ISP, position, public
URLs, the addresses WebRTC announces, and the node's credential from Secret
nearcast-node-credentials. They go to an env file (``NEARCAST_<SECTION>_<KEY>=...``)
that the node's command sources, checked first with the loader ``nearcast node`` uses.
It also undoes a drain that this hook's preStop made, so that a node back from a
rollout takes classes again.

``python node_hooks.py prestop --wait SECONDS`` is the node container's preStop hook:
it drains the node at placement (``POST /v1/nodes/{id}/drain``, when Secret
nearcast-node-drain holds the operator token), then waits until no stream on the node
is live, so that a class in progress finishes before the kubelet sends SIGTERM.

Only the standard library and the nearcast package of the image: it runs in the
node's own image.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from nearcast.config import Config, ConfigError, load, parse_hostport
from tokens.node import node_id_problem

CONFIG = "/etc/nearcast/node.yml"
ENV_FILE = "/run/nearcast/node.env"
CREDENTIALS = "/var/run/nearcast/credentials"
DRAIN_TOKEN = "/var/run/nearcast/drain/operator-token"
# On the host (the hostPath volume at /var/lib/nearcast): survives the pod.
DRAINED_MARKER = "/var/lib/nearcast/.drained-by-prestop"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

PREFIX = "nearcast.io/"
REQUIRED_LABELS = ("tier", "city", "isp")
REQUIRED_ANNOTATIONS = ("lat", "lon")


class SetupError(Exception):
    """The host is not labelled or provisioned for a nearcast node; the message says how."""


def log(message: str, out: TextIO | None = None) -> None:
    print(f"nearcast-k8s: {message}", file=out or sys.stderr, flush=True)


# -- init ------------------------------------------------------------------------------


def listen_port(listen: str) -> int:
    return parse_hostport(listen)[1]


def node_settings(node: Mapping[str, Any], tier: str, config: Config) -> dict[str, str]:
    """The ``NEARCAST_*`` variables a Kubernetes Node object gives the node on it.

    ``tier`` is the DaemonSet's (its nodeSelector picked this host by that label);
    ``config`` the node's config file, for the ports its public URLs name.
    """
    meta = node.get("metadata", {})
    name = str(meta.get("name", ""))
    labels: dict[str, str] = meta.get("labels") or {}
    notes: dict[str, str] = meta.get("annotations") or {}
    if (problem := node_id_problem(name, "a Kubernetes node name used as node.id")) is not None:
        raise SetupError(problem)
    missing = [f"label {PREFIX}{k}" for k in REQUIRED_LABELS if not labels.get(PREFIX + k)]
    region = labels.get(PREFIX + "region") or labels.get("topology.kubernetes.io/region", "")
    if not region:
        missing.append(f"label {PREFIX}region (or topology.kubernetes.io/region)")
    missing += [
        f"annotation {PREFIX}{k}" for k in REQUIRED_ANNOTATIONS if not notes.get(PREFIX + k)
    ]
    if missing:
        raise SetupError(
            f"Kubernetes node {name} lacks {', '.join(missing)} (docs/kubernetes.md, "
            "'Label the hosts')"
        )
    if labels[PREFIX + "tier"] != tier:
        raise SetupError(
            f"Kubernetes node {name} is labelled {PREFIX}tier={labels[PREFIX + 'tier']} "
            f"but runs the {tier} DaemonSet"
        )
    for key in REQUIRED_ANNOTATIONS:
        try:
            float(notes[PREFIX + key])
        except ValueError:
            raise SetupError(
                f"annotation {PREFIX}{key} of Kubernetes node {name} is not a number: "
                f"{notes[PREFIX + key]!r}"
            ) from None

    host = notes.get(PREFIX + "public-host", "")
    if not host:
        external = [
            a.get("address", "")
            for a in node.get("status", {}).get("addresses") or []
            if a.get("type") == "ExternalIP"
        ]
        host = external[0] if external else ""
    public_rtmp = notes.get(PREFIX + "public-rtmp", "")
    public_http = notes.get(PREFIX + "public-http", "")
    if not host and not (public_rtmp and public_http):
        raise SetupError(
            f"Kubernetes node {name} has no ExternalIP address: annotate it with "
            f"{PREFIX}public-host (the name or address publishers and viewers reach it at)"
        )
    # WebRTC peers reach the node at these (webrtc.announce_ips): a cloud VM's ExternalIP
    # is a 1:1 NAT address that no interface of the host carries. One an interface does
    # carry is announced once (the node skips a duplicate).
    announce = notes.get(PREFIX + "announce-ips")
    if announce is None:
        ips = [
            a.get("address", "")
            for a in node.get("status", {}).get("addresses") or []
            if a.get("type") == "ExternalIP"
        ]
    else:
        ips = [ip.strip() for ip in announce.split(",") if ip.strip()]
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise SetupError(
                f"{ip!r} (annotation {PREFIX}announce-ips or the ExternalIP of Kubernetes "
                f"node {name}) is not an IP address"
            ) from None
    shown = f"[{host}]" if ":" in host else host
    if not public_rtmp:
        public_rtmp = f"rtmp://{shown}:{listen_port(config.rtmp.listen)}"
    if not public_http:
        if config.http.listen:
            public_http = f"http://{shown}:{listen_port(config.http.listen)}"
        else:
            public_http = f"https://{shown}:{listen_port(config.http.tls_listen)}"
    settings = {
        "NEARCAST_NODE_ID": name,
        "NEARCAST_NODE_REGION": region,
        "NEARCAST_NODE_CITY": labels[PREFIX + "city"],
        "NEARCAST_NODE_ISP": labels[PREFIX + "isp"],
        "NEARCAST_NODE_LAT": notes[PREFIX + "lat"],
        "NEARCAST_NODE_LON": notes[PREFIX + "lon"],
        "NEARCAST_NODE_PUBLIC_RTMP": public_rtmp,
        "NEARCAST_NODE_PUBLIC_HTTP": public_http,
    }
    if ips:
        settings["NEARCAST_WEBRTC_ANNOUNCE_IPS"] = json.dumps(ips)
    return settings


def mint_hint(settings: Mapping[str, str], tier: str) -> str:
    """The command that mints the credential these settings need."""
    hosts = sorted(
        {
            urlsplit(settings[k]).hostname or ""
            for k in ("NEARCAST_NODE_PUBLIC_RTMP", "NEARCAST_NODE_PUBLIC_HTTP")
        }
    )
    return shlex.join(
        [
            "nearcast",
            "node-credential",
            settings["NEARCAST_NODE_ID"],
            "--tier",
            tier,
            "--region",
            settings["NEARCAST_NODE_REGION"],
            "--city",
            settings["NEARCAST_NODE_CITY"],
            "--isp",
            settings["NEARCAST_NODE_ISP"],
            *(arg for h in hosts for arg in ("--host", h)),
        ]
    )


def credential(settings: Mapping[str, str], tier: str, directory: str = CREDENTIALS) -> str:
    name = settings["NEARCAST_NODE_ID"]
    try:
        token = Path(directory, name).read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        raise SetupError(
            f"Secret nearcast-node-credentials has no credential for node {name}: add it "
            f"under the key {name}, minted with `{mint_hint(settings, tier)}`"
        )
    return token


def env_file(env: Mapping[str, str]) -> str:
    """``NAME='value'`` lines for ``set -a; . FILE``: quoted, so no value is ever code."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def fetch_node(name: str, account: str = SERVICE_ACCOUNT) -> dict[str, Any]:
    """The Node object ``name`` from the API server, with the pod's service account."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise SetupError("KUBERNETES_SERVICE_HOST is not set: not running in a pod?")
    host = f"[{host}]" if ":" in host else host
    token = Path(account, "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(Path(account, "ca.crt")))
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/nodes/{quote(name)}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            node: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        raise SetupError(
            f"the API server answered {exc.code} for node {name} (ClusterRole nearcast-node "
            "must allow get on nodes)"
        ) from None
    except OSError as exc:
        raise SetupError(f"cannot read node {name} from the API server: {exc}") from None
    return node


def placement_call(config: Config, token: str, action: str, timeout: float = 5.0) -> int:
    """POST /v1/nodes/{id}/{action} at placement; the HTTP status. OSError: unreachable."""
    url = f"{config.placement.url.rstrip('/')}/v1/nodes/{quote(config.node.id)}/{action}"
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def read_token(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        return ""


def undrain(config: Config, token: str, marker: str, attempts: int = 12) -> None:
    """Undo the drain this script's preStop made (and only that one: a drain an operator
    made stays). Placement keeps a node's state across restarts."""
    if not Path(marker).exists():
        return
    if not token or not config.placement.url:
        log("drained by a preStop hook, but no drain token: uncordon the node yourself")
        return
    for attempt in range(attempts):
        try:
            status = placement_call(config, token, "uncordon")
        except OSError as exc:
            log(f"placement unreachable to uncordon {config.node.id} ({exc}), try {attempt + 1}")
            time.sleep(5)
            continue
        # 404: placement has forgotten the node; it registers afresh, ready.
        if status in (200, 404):
            Path(marker).unlink(missing_ok=True)
            log(f"node {config.node.id} takes sessions again (placement answered {status})")
        else:
            log(f"placement answered {status} to uncordon {config.node.id}: do it yourself")
        return
    log(f"node {config.node.id} is still draining at placement: uncordon it yourself")


def init(args: argparse.Namespace) -> int:
    tier = os.environ.get("NEARCAST_NODE_TIER", "")
    name = os.environ.get("NODE_NAME", "")
    try:
        config = load(args.config)
        settings = node_settings(fetch_node(name, args.service_account), tier, config)
        settings["NEARCAST_PLACEMENT_NODE_TOKEN"] = credential(settings, tier, args.credentials)
        # The node would refuse what the labels say: say so here, naming the key.
        config = load(args.config, environ={**os.environ, **settings})
    except (SetupError, ConfigError) as exc:
        log(f"cannot set up node {name}: {exc}")
        return 1
    Path(args.env_file).write_text(env_file(settings))
    undrain(config, read_token(args.drain_token), args.marker)
    log(f"node {config.node.id}: {config.node.tier}, {config.node.city}, {config.node.isp}")
    return 0


# -- preStop ---------------------------------------------------------------------------


def live_streams(body: Mapping[str, Any]) -> list[str]:
    """``tenant/stream`` of every live stream in a node's ``GET /v1/streams`` answer."""
    return [f"{s['tenant']}/{s['stream']}" for s in body.get("streams", []) if s.get("live")]


def node_streams(config: Config, timeout: float = 5.0) -> list[str]:
    """The node's own live streams, asked on loopback (with the operator token, so that
    streams of tenants with playback tokens are listed too)."""
    context: ssl.SSLContext | None = None
    if config.http.listen:
        url = f"http://127.0.0.1:{listen_port(config.http.listen)}/v1/streams"
    else:
        # Its own certificate names the public host, not the loopback address.
        url = f"https://127.0.0.1:{listen_port(config.http.tls_listen)}/v1/streams"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    headers = {"Accept": "application/json"}
    if config.ingest.operator_token:
        headers["Authorization"] = f"Bearer {config.ingest.operator_token}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return live_streams(json.load(response))


def prestop(args: argparse.Namespace) -> int:
    out = _open_log(args.log)
    deadline = time.monotonic() + args.wait
    try:
        config = load(args.config)
    except ConfigError as exc:
        log(f"preStop: {exc}", out)
        return 0
    token = read_token(args.drain_token)
    if not config.placement.url:
        log("preStop: no placement.url, nothing to drain", out)
    elif token:
        try:
            status = placement_call(config, token, "drain")
        except OSError as exc:
            log(f"preStop: placement unreachable ({exc}); waiting for the classes anyway", out)
        else:
            if status == 200:
                Path(args.marker).write_text(f"{time.time():.0f}\n")
            log(f"preStop: drain {config.node.id} at placement: {status}", out)
    else:
        log("preStop: no drain token; placement may still send classes here", out)
    while True:
        try:
            live = node_streams(config)
        except (OSError, ValueError) as exc:
            log(f"preStop: the node does not answer ({exc}): stopping it", out)
            return 0
        if not live:
            log("preStop: no live stream: stopping the node", out)
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            log(f"preStop: still live after {args.wait:.0f} s: {', '.join(live)}; stopping", out)
            return 0
        log(f"preStop: waiting for {len(live)} live stream(s): {', '.join(live[:10])}", out)
        time.sleep(min(args.poll, left))


def _open_log(path: str) -> TextIO | None:
    """Where the hook logs: a preStop hook's own output is discarded, so the DaemonSets
    name the container's main process's stderr (/proc/1/fd/2). ``None``: stderr."""
    if not path:
        return None
    try:
        return open(path, "a")  # noqa: SIM115 - lives as long as the hook
    except OSError:
        return None


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--drain-token", default=DRAIN_TOKEN)
    parser.add_argument("--marker", default=DRAINED_MARKER)
    sub = parser.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="write the node's env file from its host's labels")
    i.add_argument("--env-file", default=ENV_FILE)
    i.add_argument("--credentials", default=CREDENTIALS, help="Secret nearcast-node-credentials")
    i.add_argument("--service-account", default=SERVICE_ACCOUNT, help="its token and ca.crt")
    i.set_defaults(func=init)
    p = sub.add_parser("prestop", help="drain at placement, wait for the live streams")
    p.add_argument(
        "--wait",
        type=float,
        required=True,
        help="seconds to wait at most; leave the node time to stop within the grace period",
    )
    p.add_argument("--poll", type=float, default=10.0, help="seconds between checks")
    p.add_argument("--log", default="", help="file to log to (default: stderr)")
    p.set_defaults(func=prestop)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

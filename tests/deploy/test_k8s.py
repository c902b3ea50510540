"""deploy/k8s/: the Kubernetes manifests are valid objects and agree with the code they run.

There is no cluster here: the kustomization is rendered by a small renderer of our own
(it refuses any kustomize feature it does not implement), every object is validated
against the Kubernetes API schema of a pinned version in strict mode, and what strict
mode cannot see is checked against the code: selectors match their pods, probes name
ports and paths the node and placement serve (liveness without Redis or placement),
the config files and ``NEARCAST_*`` variables are keys the loader knows, every Secret
and ConfigMap reference resolves, and the node hooks turn a host's labels into a node
that placement accepts and drain it at placement before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.server
import importlib.util
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import uvicorn
import yaml
from nodeutil import self_signed
from placementutil import free_port, wait_for

from nearcast.cli import build_parser
from nearcast.config import Config, ConfigError, load, parse_hostport
from nearcast.node import Node
from nearcast.placement_cli import node_credential
from placement.app import create_app
from placement.registry.memory import InProcessRegistry
from placement.registry.redis import RedisRegistry
from settings import env_keys

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The Kubernetes version the manifests are validated against (and written for).
KUBERNETES_VERSION = "1.33.0"
TIERS = ("edge", "mec", "cloud")
GRACE_S = 3600
# What the node needs after its preStop hook to flush its workers and recordings.
STOP_S = 120
# One ladder unit per core (transcode/capacity.py; the DaemonSets' comment gives the
# measurement), and one core for the node process itself.
UNITS_PER_CORE = 1.0
NODE_PROCESS_CORES = 1.0
# Published by Kubernetes in every namespace (the API server's CA).
BUILTIN_CONFIGMAPS = {"kube-root-ca.crt": {"ca.crt"}}
# Addresses a node host has (IPv4, IPv6, the CNI bridge's, ...): a WebRTC session takes
# a UDP port on each (docs/webrtc-network.md). node.yml's range is sized for it.
HOST_ADDRESSES = 4


# -- the renderer ----------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator"}
GENERATOR_FIELDS = {"name", "namespace", "files", "options"}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k DIRECTORY`` creates, for the subset of kustomize
    these manifests use: ``resources`` (files and directories) and
    ``configMapGenerator`` with ``files`` and no name hash."""
    path = directory / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    if unknown := set(k) - KUSTOMIZATION_FIELDS:
        raise Unsupported(f"{path}: kustomize fields this renderer lacks: {sorted(unknown)}")
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise Unsupported(f"{path}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        elif target.is_file():
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
        else:
            raise Unsupported(f"{path}: resource {entry} is neither a file nor a directory")
    for gen in k.get("configMapGenerator", []):
        if unknown := set(gen) - GENERATOR_FIELDS:
            raise Unsupported(f"{path}: configMapGenerator fields {sorted(unknown)}")
        if gen.get("options") != {"disableNameSuffixHash": True}:
            raise Unsupported(f"{path}: {gen['name']} must set only disableNameSuffixHash: true")
        data = {}
        for item in gen["files"]:
            key, _, file = item.rpartition("=")
            source = (directory / file).resolve()
            # kustomize's load restrictor: files come from the kustomization's own tree.
            if not source.is_relative_to(directory.resolve()):
                raise Unsupported(f"{path}: {file} is outside {directory}")
            data[key or source.name] = source.read_text()
        meta = {
            "name": gen["name"],
            **({"namespace": gen["namespace"]} if "namespace" in gen else {}),
        }
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        ident = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert ident not in seen, f"{path}: {ident} is defined twice"
        seen.add(ident)
    return objects


@cache
def _rendered(directory: str) -> tuple[str, ...]:
    return tuple(json.dumps(o) for o in render(Path(directory)))


def rendered(directory: Path = K8S) -> list[dict[str, Any]]:
    """A fresh copy of the rendering of ``directory`` (tests may change it)."""
    return [json.loads(o) for o in _rendered(str(directory))]


RENDERINGS = {"base": K8S, "redis-trial": K8S / "redis-trial"}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def daemonsets(objects: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Tier -> its node DaemonSet."""
    out = {}
    for o in objects or rendered():
        if o["kind"] == "DaemonSet":
            out[o["spec"]["template"]["spec"]["nodeSelector"]["nearcast.io/tier"]] = o
    return out


def container(workload: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    [c] = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return c


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: []\npatches: [{path: p.yaml}]\n"
    )
    with pytest.raises(Unsupported, match="patches"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "configMapGenerator: [{name: x, files: [a.txt]}]\n"
    )
    with pytest.raises(Unsupported, match="disableNameSuffixHash"):
        render(tmp_path)


# -- schema ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_is_valid_in_strict_mode(name: str) -> None:
    objects = rendered(RENDERINGS[name])
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.path))
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}"
            ) from None


def test_redis_trial_adds_only_redis() -> None:
    base = {(o["kind"], o["metadata"]["name"]) for o in rendered()}
    trial = {(o["kind"], o["metadata"]["name"]) for o in rendered(RENDERINGS["redis-trial"])}
    assert base < trial
    assert {n for _, n in trial - base} == {"nearcast-redis", "nearcast-redis-trial"}
    for o in rendered(RENDERINGS["redis-trial"]):
        assert o["metadata"].get("namespace") == ("nearcast" if namespaced(o) else None), o


def namespaced(obj: dict[str, Any]) -> bool:
    return obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")


# -- selectors -------------------------------------------------------------------------

WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def selector_problems(objects: list[dict[str, Any]]) -> list[str]:
    """What strict schema validation lets through: workload selectors that do not match
    their own pods, and Service, PodDisruptionBudget and NetworkPolicy selectors that
    match no pod."""
    problems = []
    pods: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        name = f"{o['kind']}/{o['metadata']['name']}"
        selector = o["spec"]["selector"]
        if set(selector) != {"matchLabels"} or not selector["matchLabels"]:
            problems.append(f"{name}: only a non-empty matchLabels selector is checked")
            continue
        labels = o["spec"]["template"]["metadata"].get("labels", {})
        if not matches(selector["matchLabels"], labels):
            problems.append(f"{name}: selector {selector['matchLabels']} misses labels {labels}")
        pods.append((o["metadata"].get("namespace", ""), name, labels, o["spec"]["template"]))

    def selected(namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return [t for ns, _, labels, t in pods if ns == namespace and matches(selector, labels)]

    for o in objects:
        ns, name = o["metadata"].get("namespace", ""), f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Service" and "selector" in o["spec"]:
            templates = selected(ns, o["spec"]["selector"])
            if not templates:
                problems.append(f"{name}: selector {o['spec']['selector']} matches no pod")
            for port in o["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for t in templates:
                    named = {
                        p.get("name") if isinstance(target, str) else p["containerPort"]
                        for c in t["spec"]["containers"]
                        for p in c.get("ports", [])
                    }
                    if target not in named:
                        problems.append(f"{name}: targetPort {target} is no port of its pods")
        elif o["kind"] == "PodDisruptionBudget":
            if not selected(ns, o["spec"]["selector"]["matchLabels"]):
                problems.append(f"{name}: selector matches no pod")
        elif o["kind"] == "NetworkPolicy":
            if not selected(ns, o["spec"]["podSelector"]["matchLabels"]):
                problems.append(f"{name}: podSelector matches no pod")
            for rule in o["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    if not selected(ns, peer["podSelector"]["matchLabels"]):
                        problems.append(f"{name}: ingress from {peer} matches no pod")
        elif o["kind"] == "StatefulSet":
            services = [
                s
                for s in objects
                if s["kind"] == "Service" and s["metadata"]["name"] == o["spec"]["serviceName"]
            ]
            if not services:
                problems.append(f"{name}: serviceName {o['spec']['serviceName']} is no Service")
    return problems


@pytest.mark.parametrize("name", RENDERINGS)
def test_selectors_match_their_pods(name: str) -> None:
    assert selector_problems(rendered(RENDERINGS[name])) == []


def test_selector_check_catches_a_broken_selector() -> None:
    objects = rendered(RENDERINGS["redis-trial"])
    ds = daemonsets(objects)["mec"]
    ds["spec"]["template"]["metadata"]["labels"]["nearcast.io/tier"] = "edge"
    svc = find(objects, "Service", "nearcast-placement")
    svc["spec"]["selector"] = {"app.kubernetes.io/name": "nearcast-placment"}
    problems = selector_problems(objects)
    assert any(p.startswith("DaemonSet/nearcast-node-mec: selector") for p in problems), problems
    assert any(p.startswith("Service/nearcast-placement: selector") for p in problems), problems
    assert len(problems) == 2, problems
    # A Service whose target port names no container port is caught too.
    objects = rendered()
    find(objects, "Service", "nearcast-placement")["spec"]["ports"][0]["targetPort"] = "htp"
    assert selector_problems(objects) == [
        "Service/nearcast-placement: targetPort htp is no port of its pods"
    ]


# -- references ------------------------------------------------------------------------


def references(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str, str, str | None, bool]]:
    """(where, Secret|ConfigMap, name, key or None, optional) of every reference."""
    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        where = f"{o['kind']}/{o['metadata']['name']}"
        spec = o["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if field in ref:
                        r = ref[field]
                        yield where, kind, r["name"], r["key"], r.get("optional", False)
            for e in c.get("envFrom", []):
                for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                    if field in e:
                        yield where, kind, e[field]["name"], None, e[field].get("optional", False)
        for v in spec.get("volumes", []):
            sources = [v] + v.get("projected", {}).get("sources", [])
            for s in sources:
                if "secret" in s:
                    name = s["secret"].get("secretName") or s["secret"]["name"]
                    keys = [i["key"] for i in s["secret"].get("items", [])] or [None]
                    for key in keys:
                        yield where, "Secret", name, key, s["secret"].get("optional", False)
                if "configMap" in s:
                    keys = [i["key"] for i in s["configMap"].get("items", [])] or [None]
                    for key in keys:
                        optional = s["configMap"].get("optional", False)
                        yield where, "ConfigMap", s["configMap"]["name"], key, optional


@pytest.mark.parametrize("name", RENDERINGS)
def test_secret_and_configmap_references_resolve(name: str) -> None:
    objects = rendered(RENDERINGS[name])
    defined: dict[tuple[str, str], set[str]] = {
        ("ConfigMap", n): keys for n, keys in BUILTIN_CONFIGMAPS.items()
    }
    for o in objects:
        if o["kind"] == "Secret":
            defined["Secret", o["metadata"]["name"]] = set(o.get("stringData", {})) | set(
                o.get("data", {})
            )
        elif o["kind"] == "ConfigMap":
            defined["ConfigMap", o["metadata"]["name"]] = set(o.get("data", {}))
    refs = list(references(objects))
    assert refs
    for where, kind, ref, key, optional in refs:
        assert (kind, ref) in defined, f"{where}: {kind} {ref} is not in the manifests"
        if key is not None and not optional:
            assert key in defined[kind, ref], f"{where}: {kind} {ref} has no key {key}"


@pytest.mark.parametrize("name", RENDERINGS)
def test_mounts_service_accounts_and_rbac_resolve(name: str) -> None:
    """What the API server would refuse or leave pending: a mount of no volume, a
    service account or role that does not exist."""
    objects = rendered(RENDERINGS[name])
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for o in objects:
        if o["kind"] in WORKLOADS:
            spec = o["spec"]["template"]["spec"]
            volumes = {v["name"] for v in spec.get("volumes", [])}
            claims = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
            for c in spec.get("initContainers", []) + spec["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes | claims, f"{o['metadata']['name']}: {m['name']}"
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", spec["serviceAccountName"]) in kinds
        if o["kind"] == "ClusterRoleBinding":
            assert (o["roleRef"]["kind"], o["roleRef"]["name"]) in kinds
            for subject in o["subjects"]:
                assert (subject["kind"], subject["name"]) in kinds


def test_no_secret_value_in_the_repository() -> None:
    for o in rendered(RENDERINGS["redis-trial"]):
        if o["kind"] == "Secret":
            assert "data" not in o, o["metadata"]["name"]
            values = o.get("stringData", {})
            assert all(v == "" for v in values.values()), f"{o['metadata']['name']}: {values}"


# -- config ----------------------------------------------------------------------------

SECRET_SAMPLES = {
    ("nearcast-placement", "operator-token"): "test-operator-token-0123456789",
    ("nearcast-placement", "node-keys"): '{k1: "test-node-key-0123456789"}',
    ("nearcast-placement", "metrics-token"): "test-placement-metrics-0123456789",
    ("nearcast-redis", "url"): "redis://:0123456789abcdef@nearcast-redis:6379/0",
    ("nearcast-node", "ingest-operator-token"): "test-node-operator-0123456789",
    ("nearcast-node", "metrics-token"): "test-node-metrics-0123456789",
    ("nearcast-publish-keys", "tenants"): '{school: {keys: {k1: "test-publish-key-0123456789"}}}',
    ("nearcast-node", "playback-tenants"): '{school: {keys: {k1: "test-playback-key-0123456789"}}}',
}


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment with each Secret reference given a sample value."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            r = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRET_SAMPLES[r["name"], r["key"]]
    return env


def config_map_file(
    objects: list[dict[str, Any]], workload: dict[str, Any], c: dict[str, Any], path: str
) -> Path:
    """The repository file a ConfigMap-generated volume mounts at ``path``."""
    spec = workload["spec"]["template"]["spec"]
    for m in c.get("volumeMounts", []):
        if m["mountPath"] == path:
            [volume] = [v for v in spec["volumes"] if v["name"] == m["name"]]
            cm = find(objects, "ConfigMap", volume["configMap"]["name"])
            key = m["subPath"]
            source = K8S / key
            assert source.read_text() == cm["data"][key]
            return source
    raise AssertionError(f"nothing is mounted at {path}")


def command_config(c: dict[str, Any]) -> str:
    argv = c.get("args") or shlex.split(c["command"][-1].rpartition("exec ")[2])
    args = build_parser().parse_args(argv[1:] if argv[0] == "nearcast" else argv)
    return str(args.config)


def host_settings(tier: str = "edge") -> dict[str, str]:
    """What node_hooks.py init writes for a well-labelled host of ``tier``."""
    return hooks().node_settings(
        k8s_node("edge-ber-1", tier), tier, load(str(K8S / "node.yml"), environ={})
    )


def service_links(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The variables Kubernetes adds for every Service of the pod's namespace unless
    the pod sets ``enableServiceLinks: false`` (NEARCAST_PLACEMENT_SERVICE_HOST, ...)."""
    if workload["spec"]["template"]["spec"].get("enableServiceLinks", True) is False:
        return {}
    env = {}
    for svc in objects:
        if (
            svc["kind"] != "Service"
            or svc["metadata"]["namespace"] != workload["metadata"]["namespace"]
        ):
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        first = svc["spec"]["ports"][0]
        env[f"{name}_SERVICE_HOST"] = "10.96.0.10"
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"tcp://10.96.0.10:{first['port']}"
        for port in svc["spec"]["ports"]:
            proto = port.get("protocol", "TCP")
            env[f"{name}_PORT_{port['port']}_{proto}"] = f"tcp://10.96.0.10:{port['port']}"
    return env


def node_config(tier: str, objects: list[dict[str, Any]] | None = None) -> Config:
    """The config of a node of ``tier``: its file, its DaemonSet's environment (with
    what Kubernetes adds to it), the Secrets (sample values) and what the init
    container derives from the host."""
    objects = objects or rendered(RENDERINGS["redis-trial"])
    ds = daemonsets(objects)[tier]
    c = container(ds, "node")
    file = config_map_file(objects, ds, c, command_config(c))
    env = {
        **service_links(objects, ds),
        **container_env(c),
        **host_settings(tier),
        "NEARCAST_PLACEMENT_NODE_TOKEN": "x",
    }
    return load(str(file), environ=env)


def placement_config(objects: list[dict[str, Any]] | None = None) -> Config:
    objects = objects or rendered(RENDERINGS["redis-trial"])
    d = find(objects, "Deployment", "nearcast-placement")
    c = container(d, "placement")
    file = config_map_file(objects, d, c, command_config(c))
    return load(str(file), environ={**service_links(objects, d), **container_env(c)})


def test_service_links_are_off_because_nearcast_refuses_them() -> None:
    """Kubernetes names its Service variables after the Service: nearcast-placement
    gives NEARCAST_PLACEMENT_SERVICE_HOST, which is no configuration key, and nearcast
    refuses to start on an unknown NEARCAST_* variable."""
    objects = rendered(RENDERINGS["redis-trial"])
    for o in objects:
        if o["kind"] in ("Deployment", "DaemonSet"):
            o["spec"]["template"]["spec"].pop("enableServiceLinks")
    with pytest.raises(
        ConfigError, match="NEARCAST_(PLACEMENT|REDIS)_.* names no configuration key"
    ):
        placement_config(objects)
    for tier in TIERS:
        with pytest.raises(ConfigError, match="names no configuration key"):
            node_config(tier, objects)


@pytest.mark.parametrize("tier", TIERS)
def test_node_config_and_environment_are_known_keys(tier: str) -> None:
    """node.yml loads with the strict loader (an unknown key is an error), and every
    NEARCAST_* variable the DaemonSet sets is a key of the code."""
    known = env_keys(Config)
    ds = daemonsets()[tier]
    for c in (
        ds["spec"]["template"]["spec"]["initContainers"]
        + ds["spec"]["template"]["spec"]["containers"]
    ):
        for name in container_env(c):
            if name.startswith("NEARCAST_"):
                assert name in known, f"{tier}/{c['name']}: {name} is no key"
    cfg = node_config(tier)
    assert cfg.node.tier == tier
    assert cfg.placement.url and cfg.ingest.operator_token and cfg.http.metrics_token
    assert cfg.record.tenants and cfg.record.dir.startswith("/var/lib/nearcast/")
    assert cfg.rtmp.tenants and all(
        t in cfg.ingest.auth.tenants or t == "live" for t in cfg.rtmp.tenants
    )


@pytest.mark.parametrize("tier", TIERS)
def test_webrtc_port_range_carries_every_session(tier: str) -> None:
    """The UDP range (the hosts' firewalls open it) holds a port per address of the host
    for every WebRTC viewer and publisher the node admits."""
    cfg = node_config(tier)
    low, high = cfg.webrtc.udp_port_min, cfg.webrtc.udp_port_max
    assert 1024 < low < high <= 65535
    sessions = cfg.webrtc.max_viewers + cfg.ingest.max_publishers
    assert (high - low + 1) // HOST_ADDRESSES >= sessions
    # Announced: the host's ExternalIP (host_settings' Node has 203.0.113.7).
    assert cfg.webrtc.announce_ips == ["203.0.113.7"]


def test_placement_config_and_environment_are_known_keys() -> None:
    known = env_keys(Config)
    c = container(find(rendered(), "Deployment", "nearcast-placement"), "placement")
    assert all(n in known for n in container_env(c) if n.startswith("NEARCAST_"))
    cfg = placement_config()
    assert cfg.placement.operator_token and cfg.placement.node_keys and cfg.placement.metrics_token
    # A publisher's token is good for its session at placement and at the node.
    assert cfg.placement.publish_keys == node_config("edge").ingest.auth.tenants
    assert cfg.redis.url == SECRET_SAMPLES["nearcast-redis", "url"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "placement" and not args.redis


# -- probes ----------------------------------------------------------------------------


def probe_target(c: dict[str, Any], kind: str) -> tuple[int, str]:
    get = c[kind]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        [port] = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(port), str(get["path"])


async def get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://k8s") as client:
        return await client.get(path)


@pytest.mark.parametrize("tier", TIERS)
async def test_node_probes_are_served_and_liveness_needs_no_control_plane(tier: str) -> None:
    """Liveness and start-up read /healthz, which the node answers before it has
    started anything and with its placement service out of reach (node.yml names the
    cluster's Service, which does not resolve here); readiness reads /readyz, which
    reports the node's own listeners."""
    cfg = node_config(tier)
    c = container(daemonsets()[tier], "node")
    http = parse_hostport(cfg.http.listen)[1]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"rtmp": parse_hostport(cfg.rtmp.listen)[1], "http": http}
    app = Node(cfg).http_app
    for kind in ("startupProbe", "livenessProbe"):
        port, path = probe_target(c, kind)
        assert port == http
        r = await get(app, path)
        assert r.status_code == 200, (kind, path)
        assert r.json() == {"status": "ok"}
    port, path = probe_target(c, "readinessProbe")
    assert port == http
    r = await get(app, path)
    # Not started: the handler that checks the listeners answers, and says not ready.
    assert r.status_code == 503 and r.json()["checks"] == {"rtmp": False, "http": False}
    # Liveness gives the node room: a minute of failures before a restart.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


async def test_placement_liveness_survives_a_redis_outage() -> None:
    """With Redis unreachable, the liveness path answers 200 and the readiness path 503:
    an outage takes instances out of the Service, it does not restart them."""
    cfg = placement_config()
    c = container(find(rendered(), "Deployment", "nearcast-placement"), "placement")
    # Nothing listens there.
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    registry = RedisRegistry.from_url(unreachable, cfg.placement.key_prefix)
    app = create_app(cfg.placement, registry)
    listen = parse_hostport(cfg.placement.listen)[1]
    port, path = probe_target(c, "livenessProbe")
    assert port == listen and (await get(app, path)).status_code == 200
    port, path = probe_target(c, "readinessProbe")
    assert port == listen and (await get(app, path)).status_code == 503


def test_nodes_reach_placement_through_its_service() -> None:
    service = find(rendered(), "Service", "nearcast-placement")
    [port] = service["spec"]["ports"]
    deployment = container(find(rendered(), "Deployment", "nearcast-placement"), "placement")
    [target] = [p["containerPort"] for p in deployment["ports"] if p["name"] == port["targetPort"]]
    assert target == parse_hostport(placement_config().placement.listen)[1]
    for tier in TIERS:
        url = urlsplit(node_config(tier).placement.url)
        meta = service["metadata"]
        assert url.hostname == f"{meta['name']}.{meta['namespace']}.svc"
        assert url.port == port["port"]


# -- DaemonSets ------------------------------------------------------------------------


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("tier", TIERS)
def test_node_daemonset(tier: str) -> None:
    ds = daemonsets()[tier]
    spec = ds["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == GRACE_S
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"nearcast.io/tier": tier}
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    c = container(ds, "node")
    env = container_env(c)
    assert (
        env["NEARCAST_NODE_TIER"]
        == container_env(container(ds, "locate", init=True))["NEARCAST_NODE_TIER"]
        == tier
    )
    # Capacity follows the CPU the pod asks for.
    cpu = cores(c["resources"]["requests"]["cpu"])
    assert (
        float(env["NEARCAST_TRANSCODE_CAPACITY_UNITS"])
        == (cpu - NODE_PROCESS_CORES) * UNITS_PER_CORE
    )
    assert node_config(tier).transcode.capacity_units > 0
    assert "cpu" not in c["resources"].get("limits", {})
    # The preStop hook waits for the classes, and leaves the node time to stop.
    hook = c["lifecycle"]["preStop"]["exec"]["command"]
    argv = shlex.split(hook[-1].rpartition("exec ")[2])
    assert argv[:2] == ["python", "/etc/nearcast/scripts/node_hooks.py"]
    wait = float(argv[argv.index("--wait") + 1])
    # Its lines go to the node's own log (a hook's output is otherwise discarded).
    assert argv[argv.index("--log") + 1] == "/proc/1/fd/2"
    assert wait + STOP_S <= GRACE_S and wait >= GRACE_S / 2
    # The node container faces the internet: no API token, no root.
    assert spec["automountServiceAccountToken"] is False
    assert all(m["name"] != "kube-api-access" for m in c["volumeMounts"])
    assert c["securityContext"]["runAsNonRoot"] is True
    # Recordings go to the host.
    state = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "state"]
    assert state and node_config(tier).record.dir.startswith(state[0] + "/")


def test_daemonsets_differ_only_in_tier_and_size() -> None:
    sized = {
        "NEARCAST_TRANSCODE_CAPACITY_UNITS",
        "NEARCAST_NODE_EGRESS_MBPS",
        "NEARCAST_NODE_MAX_VIEWERS",
    }
    sized |= {"NEARCAST_WEBRTC_MAX_VIEWERS", "NEARCAST_RECORD_QUOTA_BYTES"}

    def normal(tier: str, ds: dict[str, Any]) -> str:
        ds = copy.deepcopy(ds)
        c = container(ds, "node")
        c["env"] = [e for e in c["env"] if e["name"] not in sized]
        del c["resources"]
        return json.dumps(ds).replace(f"nearcast-node-{tier}", "T").replace(f'"{tier}"', '"T"')

    shapes = {tier: normal(tier, ds) for tier, ds in daemonsets().items()}
    assert set(shapes) == set(TIERS)
    assert len(set(shapes.values())) == 1


# -- the node hooks --------------------------------------------------------------------


@cache
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_hooks", K8S / "node_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def k8s_node(name: str, tier: str, **annotations: str) -> dict[str, Any]:
    """A Kubernetes Node as the API server returns it, labelled for nearcast."""
    return {
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "nearcast.io/tier": tier,
                "nearcast.io/region": "eu-central",
                "nearcast.io/city": "berlin",
                "nearcast.io/isp": "telekom",
            },
            "annotations": {
                "nearcast.io/lat": "52.520",
                "nearcast.io/lon": "-13.405",
                **annotations,
            },
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.7"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
            ]
        },
    }


def test_host_labels_become_the_node_settings() -> None:
    cfg = node_config("edge")
    assert (cfg.node.id, cfg.node.tier, cfg.node.region) == ("edge-ber-1", "edge", "eu-central")
    assert (cfg.node.city, cfg.node.isp, cfg.node.lat, cfg.node.lon) == (
        "berlin",
        "telekom",
        52.52,
        -13.405,
    )
    assert cfg.node.public_rtmp == "rtmp://203.0.113.7:1935"
    assert cfg.node.public_http == "http://203.0.113.7:8080"
    h = hooks()
    base = load(str(K8S / "node.yml"), environ={})
    named = h.node_settings(
        k8s_node("n1", "mec", **{"nearcast.io/public-host": "n1.example.net"}), "mec", base
    )
    assert named["NEARCAST_NODE_PUBLIC_HTTP"] == "http://n1.example.net:8080"
    # WebRTC announces the ExternalIP unless the host names its own addresses, or none.
    assert cfg.webrtc.announce_ips == ["203.0.113.7"]
    ips = {"nearcast.io/announce-ips": "198.51.100.9, 2001:db8::9"}
    announced = h.node_settings(k8s_node("n1", "edge", **ips), "edge", base)
    env = {**announced, "NEARCAST_PLACEMENT_NODE_TOKEN": "x"}
    assert load(str(K8S / "node.yml"), environ=env).webrtc.announce_ips == [
        "198.51.100.9",
        "2001:db8::9",
    ]
    silent = h.node_settings(
        k8s_node("n1", "edge", **{"nearcast.io/announce-ips": ""}), "edge", base
    )
    assert "NEARCAST_WEBRTC_ANNOUNCE_IPS" not in silent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda n: n["metadata"]["labels"].pop("nearcast.io/city"), "label nearcast.io/city"),
        (
            lambda n: n["metadata"]["annotations"].pop("nearcast.io/lat"),
            "annotation nearcast.io/lat",
        ),
        (
            lambda n: n["metadata"]["annotations"].update({"nearcast.io/lon": "east"}),
            "not a number",
        ),
        (
            lambda n: n["metadata"]["labels"].update({"nearcast.io/tier": "cloud"}),
            "runs the edge DaemonSet",
        ),
        (lambda n: n["status"].update({"addresses": []}), "nearcast.io/public-host"),
        (lambda n: n["metadata"].update({"name": "n" * 70}), "node.id"),
        (
            lambda n: n["metadata"]["annotations"].update({"nearcast.io/announce-ips": "a.b"}),
            "'a.b' .* is not an IP address",
        ),
    ],
)
def test_badly_labelled_host_is_refused_with_the_fix(change: Any, message: str) -> None:
    node = k8s_node("edge-ber-1", "edge")
    change(node)
    with pytest.raises(hooks().SetupError, match=message):
        hooks().node_settings(node, "edge", load(str(K8S / "node.yml"), environ={}))


@contextlib.contextmanager
def api_server(tmp_path: Path, nodes: dict[str, dict[str, Any]], token: str) -> Iterator[int]:
    """An HTTPS stand-in for the Kubernetes API server: GET /api/v1/nodes/NAME with the
    service account's bearer token; its port (certificate for localhost)."""
    cert, key = self_signed(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            name = self.path.removeprefix("/api/v1/nodes/")
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_error(401)
            elif name not in nodes:
                self.send_error(404)
            else:
                body = json.dumps(nodes[name]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_init(tmp_path: Path, port: int, node_name: str) -> subprocess.CompletedProcess[str]:
    """`python node_hooks.py init` as the DaemonSet's init container runs it."""
    ds = daemonsets()["edge"]
    locate = container(ds, "locate", init=True)
    argv = locate["command"]
    assert argv[:3] == ["python", "/etc/nearcast/scripts/node_hooks.py", "init"]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "KUBERNETES_SERVICE_HOST": "localhost",
        "KUBERNETES_SERVICE_PORT": str(port),
        "NODE_NAME": node_name,
        **{e["name"]: e["value"] for e in locate["env"] if "value" in e},
    }
    return subprocess.run(
        [
            sys.executable,
            str(K8S / "node_hooks.py"),
            "--config",
            str(K8S / "node.yml"),
            "--marker",
            str(tmp_path / "marker"),
            "--drain-token",
            str(tmp_path / "no-drain-token"),
            "init",
            "--env-file",
            str(tmp_path / "node.env"),
            "--service-account",
            str(tmp_path / "sa"),
            "--credentials",
            str(tmp_path / "credentials"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_container_writes_the_node_env_from_the_api_server(tmp_path: Path) -> None:
    """The init container's command against an API server: the env file it writes,
    sourced by the node container's shell, gives the node its host's identity and
    credential; a host without a credential is refused with the command that mints it."""
    (tmp_path / "sa").mkdir()
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "edge-ber-1").write_text("v1.credential-of-edge-ber-1\n")
    nodes = {n: k8s_node(n, "edge") for n in ("edge-ber-1", "edge-muc-1")}
    with api_server(tmp_path, nodes, "sa-token") as port:
        (tmp_path / "sa" / "token").write_text("sa-token\n")
        shutil.copy(tmp_path / "cert.pem", tmp_path / "sa" / "ca.crt")
        done = run_init(tmp_path, port, "edge-ber-1")
        assert done.returncode == 0, done.stderr
        refused = run_init(tmp_path, port, "edge-muc-1")
    assert refused.returncode == 1
    assert "nearcast node-credential edge-muc-1 --tier edge" in refused.stderr, refused.stderr
    node = container(daemonsets()["edge"], "node")
    script = node["command"][-1].replace("/run/nearcast/node.env", str(tmp_path / "node.env"))
    script = script.rpartition("&& exec ")[0] + "&& env -0"
    out = subprocess.run(
        ["sh", "-c", script], capture_output=True, check=True, env={"PATH": os.environ["PATH"]}
    ).stdout.decode()
    env = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    assert env["NEARCAST_PLACEMENT_NODE_TOKEN"] == "v1.credential-of-edge-ber-1"
    cfg = load(
        str(K8S / "node.yml"), environ={k: v for k, v in env.items() if k.startswith("NEARCAST_")}
    )
    assert (cfg.node.id, cfg.node.city, cfg.node.isp) == ("edge-ber-1", "berlin", "telekom")
    assert cfg.node.public_http == "http://203.0.113.7:8080"


def test_env_file_reads_back_through_sh(tmp_path: Path) -> None:
    values = {**host_settings(), "NEARCAST_PLACEMENT_NODE_TOKEN": "v1.a'b\"c$(id)`x` ;#"}
    (tmp_path / "node.env").write_text(hooks().env_file(values))
    out = subprocess.run(
        ["sh", "-c", f"set -a && . {tmp_path}/node.env && set +a && env -0"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.decode()
    env = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    assert {k: env[k] for k in values} == values


async def test_minted_credential_from_the_hint_registers_the_node(tmp_path: Path) -> None:
    """A host without a credential is refused with the `nearcast node-credential` line
    to run; the credential that line mints is one placement accepts from the node."""
    settings = host_settings()
    h = hooks()
    with pytest.raises(h.SetupError, match="node-credential edge-ber-1") as refused:
        h.credential(settings, "edge", str(tmp_path))
    line = str(refused.value).split("`")[1]
    keys = SECRET_SAMPLES["nearcast-placement", "node-keys"]
    token = node_credential(
        build_parser().parse_args(shlex.split(line)[1:]),
        environ={"NEARCAST_PLACEMENT_NODE_KEYS": keys},
    )
    (tmp_path / "edge-ber-1").write_text(token + "\n")
    assert h.credential(settings, "edge", str(tmp_path)) == token
    from nearcast.placement_report import PlacementReport

    descriptor = PlacementReport(Node(node_config("edge")), "0.0.0.0").descriptor()
    app = create_app(placement_config().placement, InProcessRegistry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://placement") as client:
        r = await client.post(
            "/v1/nodes/edge-ber-1/heartbeat",
            json={"load": {}, "node": descriptor.descriptor()},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200, r.text


def test_live_streams_reads_the_node_stream_list() -> None:
    body = {
        "streams": [
            {"tenant": "school", "stream": "math-101", "live": True},
            {"tenant": "school", "stream": "bio-7", "live": False},
        ]
    }
    assert hooks().live_streams(body) == ["school/math-101"]
    assert hooks().live_streams({"node": {}, "streams": []}) == []


@contextlib.asynccontextmanager
async def placement_server(config: Config) -> AsyncIterator[str]:
    port = free_port()
    app = create_app(config.placement, InProcessRegistry())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, 30, "the placement server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def node_state(url: str, token: str, node_id: str) -> str | None:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{url}/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    states = {n["id"]: n["state"] for n in r.json()["nodes"]}
    return states.get(node_id)


async def wait_state(url: str, token: str, node_id: str, state: str) -> None:
    async def reached() -> bool:
        return await node_state(url, token, node_id) == state

    await wait_for(reached, 30, f"node {node_id} {state} at placement")


async def test_prestop_drains_at_placement_and_the_next_start_undoes_it(tmp_path: Path) -> None:
    """The real preStop command against a running node and placement service: it drains
    the node, finds no live stream and returns; the next init undoes that drain (and
    only a drain it made)."""
    operator = SECRET_SAMPLES["nearcast-placement", "operator-token"]
    keys = SECRET_SAMPLES["nearcast-placement", "node-keys"]
    async with placement_server(placement_config()) as url:
        settings = {**host_settings(), "NEARCAST_NODE_PUBLIC_RTMP": "rtmp://127.0.0.1:1935"}
        settings["NEARCAST_NODE_PUBLIC_HTTP"] = "http://127.0.0.1:8080"
        minted = node_credential(
            build_parser().parse_args(
                shlex.split(
                    hooks().mint_hint(settings, "edge").replace("203.0.113.7", "127.0.0.1")
                )[1:]
            ),
            environ={"NEARCAST_PLACEMENT_NODE_KEYS": keys},
        )
        env = {
            **container_env(container(daemonsets()["edge"], "node")),
            **settings,
            "NEARCAST_PLACEMENT_NODE_TOKEN": minted,
            "NEARCAST_PLACEMENT_URL": url,
            "NEARCAST_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            "NEARCAST_RTMP_LISTEN": "127.0.0.1:0",
            "NEARCAST_RECORD_DIR": str(tmp_path / "recordings"),
        }
        cfg = load(str(K8S / "node.yml"), environ=env)
        node = Node(cfg)
        await node.start()
        try:
            await wait_state(url, operator, "edge-ber-1", "ready")
            (tmp_path / "drain-token").write_text(operator + "\n")
            marker = tmp_path / "drained"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(K8S / "node_hooks.py"),
                "--config",
                str(K8S / "node.yml"),
                "--drain-token",
                str(tmp_path / "drain-token"),
                "--marker",
                str(marker),
                "prestop",
                "--wait",
                "30",
                "--poll",
                "0.2",
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                cwd=ROOT,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            assert "no live stream" in err.decode(), err.decode()
            assert marker.exists()
            assert await node_state(url, operator, "edge-ber-1") == "draining"
            # An operator's own drain has no marker: a restart keeps it.
            marker.rename(tmp_path / "kept")
            await asyncio.to_thread(hooks().undrain, cfg, operator, str(marker))
            assert await node_state(url, operator, "edge-ber-1") == "draining"
            (tmp_path / "kept").rename(marker)
            await asyncio.to_thread(hooks().undrain, cfg, operator, str(marker))
            assert await node_state(url, operator, "edge-ber-1") == "ready"
            assert not marker.exists()
        finally:
            await node.stop()


# -- the trial Redis -------------------------------------------------------------------


def fake_redis(tmp_path: Path) -> dict[str, str]:
    """redis-server and redis-cli that print what they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").write_text('#!/bin/sh\necho "server $*"\n')
    (bin_dir / "redis-cli").write_text(
        '#!/bin/sh\n[ "$REDISCLI_AUTH" = 0123456789abcdef ] && echo PONG || echo NOAUTH\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def redis_sh(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    trial = rendered(RENDERINGS["redis-trial"])
    script = find(trial, "ConfigMap", "nearcast-redis-trial")["data"]["redis.sh"]
    return subprocess.run(
        ["sh", "-c", script, "redis.sh", *args], capture_output=True, text=True, env=dict(env)
    )


def test_trial_redis_takes_its_password_from_the_placement_url(tmp_path: Path) -> None:
    trial = rendered(RENDERINGS["redis-trial"])
    redis = container(find(trial, "StatefulSet", "nearcast-redis"), "redis")
    assert redis["env"] == [
        {
            "name": "REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": "nearcast-redis", "key": "url"}},
        }
    ]
    assert redis["command"][:2] == ["sh", "/etc/nearcast-redis/redis.sh"]
    env = {**fake_redis(tmp_path), "REDIS_URL": SECRET_SAMPLES["nearcast-redis", "url"]}
    out = redis_sh(env, "server")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "server",
        "--appendonly",
        "yes",
        "--save",
        "--dir",
        "/data",
        "--requirepass",
        "0123456789abcdef",
    ]
    assert redis_sh(env, "ping").returncode == 0
    # The URL placement uses names this Redis, its Service and port.
    url = placement_config().redis.url
    service = find(trial, "Service", "nearcast-redis")
    assert (
        url.split("@")[1]
        == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "must be redis://:PASSWORD@nearcast-redis:6379/0"),
        ("redis://nearcast-redis:6379/0", "must be redis://:PASSWORD@nearcast-redis:6379/0"),
        ("redis://:@nearcast-redis:6379/0", "must be redis://:PASSWORD@nearcast-redis:6379/0"),
        ("redis://:p%40ss@nearcast-redis:6379/0", "URL-safe"),
    ],
)
def test_trial_redis_refuses_a_url_without_a_usable_password(
    tmp_path: Path, url: str, message: str
) -> None:
    out = redis_sh({**fake_redis(tmp_path), "REDIS_URL": url}, "server")
    assert out.returncode == 2 and message in out.stderr, out
    assert "server" not in out.stdout

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nearcast import placement_cli as cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nearcast")
    cli.register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize(
    ("argv", "func"),
    [
        (["placement", "--redis", "redis://x:1/0", "--listen", "127.0.0.1:9"], cli.run_service),
        (["simulate", "--nodes", "50", "--policy", "a.yml", "--policy", "b.yml"], cli.run_simulate),
    ],
)
def test_subcommands_parse(argv: list[str], func: object) -> None:
    args = parser().parse_args(argv)
    assert args.func is func


@pytest.mark.parametrize("command", ["placement", "simulate"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "--" in capsys.readouterr().out


def test_simulate_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(
        ["simulate", "--nodes", "200", "--classes", "60", "--out", str(tmp_path)]
    )
    assert args.func(args) == 0
    assert "local-serve ratio" in capsys.readouterr().out
    for name in ("report.md", "tiers.png", "latency.png", "local_by_hour.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_simulate_with_policy_file(tmp_path: Path) -> None:
    pol = tmp_path / "p.yml"
    pol.write_text("name: mec-first\nversion: 2\nfallback: [mec, edge, cloud]\n")
    args = parser().parse_args(
        [
            "simulate",
            "--nodes",
            "100",
            "--classes",
            "20",
            "--policy",
            str(pol),
            "--out",
            str(tmp_path),
        ]
    )
    assert args.func(args) == 0
    assert "mec-first@2" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--nodes", "0"],
        ["simulate", "--policy", "/nonexistent.yml"],
        ["placement", "--config", "/nonexistent.yml"],
        ["placement", "--listen", "nope"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(argv)
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("nearcast ")


def test_node_credential_mints_what_the_service_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from placementutil import NODE_KEYS

    from tokens.node import verify_node

    cfg = tmp_path / "placement.yml"
    cfg.write_text(f"placement:\n  node_keys: {{k1: {NODE_KEYS['k1']}}}\n")
    argv = ["node-credential", "edge-ber-1", "--config", str(cfg), "--tier", "edge"]
    argv += ["--region", "eu-central", "--city", "berlin", "--isp", "*"]
    argv += ["--host", "a.example.net", "--host", "b.example.net", "--tenants", "school, live"]
    args = parser().parse_args([*argv, "--ttl", "60"])
    assert args.func(args) == 0
    token = capsys.readouterr().out.strip()
    cred = verify_node(token, NODE_KEYS, "edge-ber-1", 1_000_000.0)
    assert (cred.tier, cred.region, cred.city, cred.isp) == ("edge", "eu-central", "berlin", "*")
    assert cred.hosts == ("a.example.net", "b.example.net")
    assert cred.tenants == ("school", "live")
    assert cli.node_credential(args, now=100.0).count(".") == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["edge 1"], "node id"),
        (["e1", "--ttl", "0"], "--ttl"),
        (["e1", "--tenants", ","], "--tenants"),
        (["e1", "--tier", "fog"], "tier"),
        (["e1", "--key", "k9"], "no key 'k9'"),
        (["e1", "--no-keys"], "'placement.node_keys' holds no key"),
    ],
)
def test_node_credential_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    cfg = tmp_path / "placement.yml"
    keys = "{}" if "--no-keys" in extra else "{k1: node-key-0123456789abcdef}"
    cfg.write_text(f"placement:\n  node_keys: {keys}\n")
    extra = [x for x in extra if x != "--no-keys"]
    argv = ["node-credential", *extra[:1], "--config", str(cfg), "--region", "r"]
    argv += ["--city", "c", "--isp", "i", "--host", "h"]
    if "--tier" not in extra:
        argv += ["--tier", "edge"]
    args = parser().parse_args([*argv, *extra[1:]])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err

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

"""``nearcast node`` runs on the event loop ``node.event_loop`` names: uvloop by default."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from nearcast import cli
from nearcast.config import Config


async def _loop_module(config: Config) -> int:
    loop = type(asyncio.get_running_loop())
    return 1 if loop.__module__.startswith("uvloop") else 0


@pytest.mark.parametrize(("name", "uvloop"), [("uvloop", 1), ("asyncio", 0)])
def test_node_runs_on_the_configured_loop(
    name: str, uvloop: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.yml"
    config.write_text(f"node:\n  event_loop: {name}\n")
    monkeypatch.setattr(cli, "run_node", _loop_module)
    assert cli._node(argparse.Namespace(config=str(config))) == uvloop


def test_uvloop_is_the_default() -> None:
    assert Config().node.event_loop == "uvloop"

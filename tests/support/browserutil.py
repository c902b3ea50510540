"""What every browser test shares: how headless Chromium is started (the flags live
beside the benchmarks' player probe, which starts Chromium the same way)."""

from bench.players import CHROMIUM_ARGS

__all__ = ["CHROMIUM_ARGS"]

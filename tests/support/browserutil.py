"""What every browser test shares: how headless Chromium is started (the flags live
beside the benchmarks' player probe, which starts Chromium the same way)."""

from bench.players import CHROMIUM_ARGS

# Publishing tests: Chromium's fake camera and microphone, granted without a prompt.
CAMERA_ARGS = [
    *CHROMIUM_ARGS,
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]

__all__ = ["CAMERA_ARGS", "CHROMIUM_ARGS"]

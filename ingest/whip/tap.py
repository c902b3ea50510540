"""Encoded frames out of aiortc, without decoding them.

aiortc's :class:`RTCRtpReceiver` depacketizes RTP into whole encoded frames in
its jitter buffer and queues them to a decoder thread. WHIP ingest wants the
encoded frames themselves (the transcode worker decodes once, for every
protocol), so :func:`tap_receiver` swaps that queue for one that hands each
frame to a callback on the event loop; the decoder thread then only ever sees
the end-of-stream ``None`` and decodes nothing.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

FrameCallback = Callable[[RTCRtpCodecParameters, JitterFrame], None]

# The name-mangled attribute RTCRtpReceiver.receive() hands to its decoder thread.
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


class _TapQueue(queue.Queue):  # type: ignore[type-arg]
    def __init__(self, on_frame: FrameCallback) -> None:
        super().__init__()
        self._on_frame = on_frame

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # end of stream: let aiortc's decoder thread finish
            super().put(None, block, timeout)
            return
        codec, frame = item
        self._on_frame(codec, frame)


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameCallback) -> None:
    """Route ``receiver``'s encoded frames to ``on_frame``; call before it starts receiving."""
    if not isinstance(getattr(receiver, _QUEUE_ATTR, None), queue.Queue):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver decoder queue to tap")
    setattr(receiver, _QUEUE_ATTR, _TapQueue(on_frame))


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send a Picture Loss Indication (RFC 4585 §6.3.1) for the receiver's active stream."""
    sources = receiver.getSynchronizationSources()
    if not sources:
        return False
    await receiver._send_rtcp_pli(sources[0].source)
    return True

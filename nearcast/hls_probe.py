"""The HLS and LL-HLS probe: plays a stream the way a player would.

- **HLS**: starts ``HOLD-BACK`` (default three target durations) behind the
  live edge, downloads each segment once it is listed, reloads the playlist
  every half target duration while waiting.
- **LL-HLS** (a playlist with parts and ``CAN-BLOCK-RELOAD``): starts at an
  independent part ``PART-HOLD-BACK`` behind the edge, then asks for each next
  part with a blocking playlist reload (``_HLS_msn``/``_HLS_part``) and fetches
  it as soon as it is listed, as hls.js does in low-latency mode.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import httpx

from nearcast.media_playlist import MediaPlaylist, parse_attrs, parse_media_playlist
from nearcast.playout import Playout, ProbeError, ProbeResult
from nearcast.stamp_decoder import StampDecoder


def _with_query(url: str, params: dict[str, Any]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


class HlsProbe:
    client: httpx.AsyncClient

    def __init__(
        self,
        url: str,
        duration: float,
        *,
        rendition: str | None = None,
        low_latency: bool | None = None,
        client: httpx.AsyncClient | None = None,
        hold_back: float | None = None,
    ) -> None:
        self.url = url
        self.duration = duration
        self.rendition = rendition
        self.low_latency = low_latency
        self._client = client
        self.hold_back = hold_back
        self._init_url: str | None = None
        self.decoder = StampDecoder()

    async def run(self) -> ProbeResult:
        if self._client is not None:
            self.client = self._client
            return await self._run()
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            self.client = client
            return await self._run()

    async def _run(self) -> ProbeResult:
        media_url, name = await self._pick_variant(self.url)
        playlist = await self._playlist(media_url)
        ll = bool(playlist.can_block and playlist.parts())
        if self.low_latency is True and not ll:
            raise ProbeError(
                f"{media_url}: not a low-latency playlist (no parts or no blocking reload)"
            )
        if self.low_latency is False:
            ll = False
        result = ProbeResult(self.url, "llhls" if ll else "hls", rendition=name)
        started = time.time()
        playout = Playout(result, started)
        deadline = time.monotonic() + self.duration
        if ll:
            await self._run_ll(media_url, playlist, playout, deadline)
        else:
            await self._run_segments(media_url, playlist, playout, deadline)
        result.seconds = time.time() - started
        return result

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            r = await self.client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ProbeError(f"{url}: {exc!r}") from None
        if r.status_code not in (200, 206):
            raise ProbeError(f"{url}: HTTP {r.status_code} {r.text.strip()[:200]}")
        return r

    async def _pick_variant(self, url: str) -> tuple[str, str]:
        text = (await self._get(url)).text
        if "#EXT-X-STREAM-INF" not in text:
            return url, ""
        variants: list[tuple[int, str]] = []
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("#EXT-X-STREAM-INF:"):
                bw = int(parse_attrs(line.split(":", 1)[1]).get("BANDWIDTH", 0))
                uri = next(
                    (x.strip() for x in lines[i + 1 :] if x.strip() and not x.startswith("#")), ""
                )
                variants.append((bw, uri))
        if not variants:
            raise ProbeError(f"{url}: multivariant playlist lists no variant")
        if self.rendition:
            chosen = [v for v in variants if v[1].split("/")[0] == self.rendition]
            if not chosen:
                names = ", ".join(v[1].split("/")[0] for v in variants)
                raise ProbeError(f"{url}: no rendition {self.rendition!r} (has {names})")
            uri = chosen[0][1]
        else:
            uri = min(variants)[1]  # the lowest: cheapest to decode, same latency
        return urljoin(url, uri), uri.split("/")[0]

    async def _playlist(self, url: str, **block: int) -> MediaPlaylist:
        target = _with_query(url, block) if block else url
        text = (await self._get(target)).text
        try:
            pl = parse_media_playlist(text)
        except (ValueError, KeyError) as exc:
            raise ProbeError(f"{target}: bad media playlist: {exc}") from None
        if pl.map_uri:
            init_url = urljoin(url, pl.map_uri)
            if init_url != self._init_url:
                self.decoder.set_init((await self._get(init_url)).content)
                self._init_url = init_url
        return pl

    async def _feed(self, data: bytes, playout: Playout) -> None:
        frames = await asyncio.to_thread(self.decoder.decode, data, time.time())
        for pts, stamp, arrival in frames:
            playout.frame(arrival, pts, stamp)

    async def _run_segments(
        self, url: str, pl: MediaPlaylist, playout: Playout, deadline: float
    ) -> None:
        hold = self.hold_back if self.hold_back is not None else pl.hold_back or 3 * pl.target
        start = len(pl.segments)
        back = 0.0
        while start > 0 and back < hold:
            start -= 1
            back += pl.segments[start].duration
        msn = pl.sequence + start
        playout.skip = max(0.0, back - hold)
        while time.monotonic() < deadline:
            seg = pl.segment(msn)
            if seg is None:
                if msn < pl.sequence:
                    msn = pl.sequence  # fell out of the window: skip ahead
                    continue
                if pl.ended:
                    return
                await asyncio.sleep(pl.target / 2)
                pl = await self._playlist(url)
                continue
            r = await self._get(urljoin(url, seg.uri))
            await self._feed(r.content, playout)
            msn += 1

    async def _run_ll(self, url: str, pl: MediaPlaylist, playout: Playout, deadline: float) -> None:
        parts = pl.parts()
        hold = self.hold_back
        if hold is None:
            hold = pl.part_hold_back or 3 * pl.part_target
        i = len(parts) - 1
        back = parts[i].duration
        while i > 0 and (back < hold or not parts[i].independent):
            i -= 1
            back += parts[i].duration
        msn, index = parts[i].msn, parts[i].index
        playout.skip = max(0.0, back - hold)
        while time.monotonic() < deadline:
            known = pl.parts_of(msn)
            if index < len(known):
                part = known[index]
                headers = None
                if part.byterange:
                    length, offset = part.byterange
                    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
                r = await self._get(urljoin(url, part.uri), headers)
                await self._feed(r.content, playout)
                index += 1
                continue
            if pl.segment(msn) is not None:
                msn, index = msn + 1, 0  # that segment is complete: on to the next
                continue
            if msn < pl.sequence:
                raise ProbeError(f"{url}: fell {pl.sequence - msn} segments behind the window")
            if pl.ended:
                return
            pl = await self._playlist(url, _HLS_msn=msn, _HLS_part=index)

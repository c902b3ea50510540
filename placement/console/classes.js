// Classes: every session with its origin node and the nodes holding its stream
// (relays), viewers per node, bitrate; a preview player (hls.js from the node, its
// LL-HLS playlist) and the kick and end buttons.
import { api, flash, fmtTime, h, poll } from "/console/util.js";

let hlsLoading = null;

// hls.js as the origin node serves it (/static/hls.min.js): nothing is bundled here.
function loadHls(nodeBase) {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsLoading) {
    hlsLoading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = `${nodeBase}/static/hls.min.js`;
      s.onload = () => resolve(window.Hls);
      s.onerror = () => { hlsLoading = null; reject(new Error(`hls.js did not load from ${s.src}`)); };
      document.head.append(s);
    });
  }
  return hlsLoading;
}

export function render(root) {
  const tbody = h("tbody");
  const player = h("div", { class: "panel", "data-testid": "preview" },
    h("p", { class: "muted" }, "Pick a class to preview it."));
  let hls = null;
  const stopPreview = () => {
    if (hls) hls.destroy();
    hls = null;
  };

  async function preview(s) {
    stopPreview();
    const video = h("video", { controls: true, muted: true, autoplay: true, playsinline: true,
      "data-session": s.id });
    video.muted = true;
    const state = h("p", { class: "muted", "data-testid": "preview-state" }, `loading ${s.playback}`);
    player.replaceChildren(h("h2", {}, `Preview: ${s.key} on ${s.node_id}`), video, state);
    const base = new URL(s.playback).origin;
    try {
      const Hls = await loadHls(base);
      if (Hls && Hls.isSupported()) {
        hls = new Hls({ lowLatencyMode: true });
        hls.on(Hls.Events.ERROR, (_, data) => {
          if (data.fatal) state.textContent = `player error: ${data.details}`;
        });
        hls.loadSource(s.playback);
        hls.attachMedia(video);
      } else {
        video.src = s.playback;
      }
      video.addEventListener("timeupdate", () => {
        state.textContent = `playing ${s.playback} (${video.currentTime.toFixed(1)} s)`;
      });
      video.play().catch(() => {});
    } catch (err) {
      state.textContent = String(err.message || err);
      state.className = "error";
    }
  }

  async function kick(s) {
    try {
      const r = await api(`/v1/sessions/${encodeURIComponent(s.id)}/kick`, { method: "POST" });
      flash(`kicked the publisher of ${r.kicked} on ${r.node}`);
    } catch (err) {
      flash(`kick ${s.key}: ${err.detail || err.message}`, true);
    }
  }

  async function end(s) {
    if (!window.confirm(`End session ${s.id} (${s.key})? Its capacity is freed.`)) return;
    try {
      await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      flash(`ended ${s.key}`);
    } catch (err) {
      flash(`end ${s.key}: ${err.detail || err.message}`, true);
    }
  }

  const count = h("p", { class: "muted" });
  root.append(h("h1", {}, "Classes"), count,
    h("div", { class: "cols" },
      h("table", { "data-testid": "sessions-table" },
        h("thead", {}, h("tr", {}, ["Class", "Origin", "Held by (viewers on the node)", "Bitrate",
          "State", "Since", ""].map((t) => h("th", {}, t)))), tbody),
      player));

  const refresh = async () => {
    const body = await api("/v1/console/sessions?limit=200");
    if (!body.sessions.length) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No sessions.")));
      return;
    }
    count.textContent = body.total > body.sessions.length
      ? `${body.sessions.length} of ${body.total} sessions`
      : `${body.total} session${body.total === 1 ? "" : "s"}`;
    tbody.replaceChildren(...body.sessions.map((s) => h("tr", { "data-session": s.id, "data-key": s.key },
      h("td", {}, h("strong", {}, s.key), h("div", { class: "muted" }, s.id)),
      h("td", {}, s.node_id, h("div", { class: `t-${s.tier}` }, `${s.tier} · ${s.origin_city}`)),
      h("td", { "data-testid": "holders" }, s.holders.map((x) => h("div", {},
        `${x.id} (${x.role}, ${x.city}): ${x.viewers ?? "?"} viewers`))),
      h("td", { "data-testid": "bitrate" }, s.bitrate ? `${Math.round(s.bitrate / 1000)} kb/s` : "—"),
      h("td", {}, s.publisher_connected ? "live" : s.state, s.renditions.length
        ? h("div", { class: "muted" }, s.renditions.join(" ")) : null),
      h("td", {}, fmtTime(s.created).slice(11)),
      h("td", {},
        h("button", { "data-action": "preview", onclick: () => preview(s) }, "Preview"),
        h("button", { "data-action": "kick", class: "danger", onclick: () => kick(s) }, "Kick"),
        h("button", { "data-action": "end", onclick: () => end(s) }, "End")))));
  };
  const stop = poll(refresh, 3000);
  return () => { stop(); stopPreview(); };
}

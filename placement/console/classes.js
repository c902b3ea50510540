// Classes: every session with its origin node and the nodes holding its stream
// (relays), viewers per node and per city, bitrate, the age of the origin's live edge;
// a preview player (the origin's LL-HLS playlist in hls.js, or WHEP over WebRTC, both
// clients loaded from the node) and the kick and end buttons.
import { api, flash, fmtTime, h, poll } from "/console/util.js";

const loading = {};

// A player library as the origin node serves it (nothing is bundled here): hls.js
// (/static/hls.min.js) or the node's WHEP viewer (/static/whep.js, the one its /watch
// page uses). Classic scripts, each defining one global.
function loadLibrary(src, name) {
  if (window[name]) return Promise.resolve(window[name]);
  if (!loading[name]) {
    loading[name] = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = () => resolve(window[name]);
      s.onerror = () => { delete loading[name]; reject(new Error(`${name} did not load from ${s.src}`)); };
      document.head.append(s);
    });
  }
  return loading[name];
}

const MODES = { llhls: "LL-HLS (hls.js)", whep: "WHEP (WebRTC)" };
const SHORT = { llhls: "LL-HLS", whep: "WHEP" };

// The origin's live edge: seconds since the end of the newest part or segment it lists.
function fmtAge(age) {
  return age === null || age === undefined ? "—" : `${age.toFixed(1)} s`;
}

export function render(root) {
  const tbody = h("tbody");
  const player = h("div", { class: "panel", "data-testid": "preview" },
    h("p", { class: "muted" }, "Pick a class to preview it."));
  const mode = h("select", { "data-testid": "preview-mode", id: "preview-mode" },
    Object.entries(MODES).map(([v, t]) => h("option", { value: v }, t)));
  let hls = null;
  let whep = null;
  const stopPreview = () => {
    if (hls) hls.destroy();
    if (whep) whep.close();
    hls = whep = null;
  };

  async function playHls(s, video, state) {
    const Hls = await loadLibrary(`${new URL(s.playback).origin}/static/hls.min.js`, "Hls");
    if (Hls && Hls.isSupported()) {
      hls = new Hls({ lowLatencyMode: true });
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (data.fatal) {
          state.textContent = `player error: ${data.details}`;
          state.className = "error";
        }
      });
      hls.loadSource(s.playback);
      hls.attachMedia(video);
    } else {
      video.src = s.playback;
    }
    video.play().catch(() => {});
    return s.playback;
  }

  async function playWhep(s, video, state) {
    const whepClient = await loadLibrary(`${new URL(s.whep).origin}/static/whep.js`, "NearcastWhep");
    const session = await whepClient.play(s.whep, video, {
      onState: (st) => { if (st !== "connected") state.textContent = `WHEP ${st}: ${s.whep}`; },
    });
    // Another preview (or another page) replaced this one while it connected.
    if (!video.isConnected) session.close();
    else whep = session;
    return s.whep;
  }

  async function preview(s) {
    stopPreview();
    const how = mode.value;
    const url = how === "whep" ? s.whep : s.playback;
    const video = h("video", { controls: true, muted: true, autoplay: true, playsinline: true,
      "data-session": s.id, "data-mode": how });
    video.muted = true;
    const state = h("p", { class: "muted", "data-testid": "preview-state" }, `loading ${url}`);
    player.replaceChildren(h("h2", {}, `Preview over ${SHORT[how]}: ${s.key} on ${s.node_id}`), video, state);
    try {
      const playing = how === "whep" ? await playWhep(s, video, state) : await playHls(s, video, state);
      video.addEventListener("timeupdate", () => {
        state.textContent = `playing ${playing} (${video.currentTime.toFixed(1)} s)`;
      });
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
    h("p", {}, h("label", { for: "preview-mode" }, "Preview over "), mode),
    h("div", { class: "cols" },
      h("table", { "data-testid": "sessions-table" },
        h("thead", {}, h("tr", {}, ["Class", "Origin", "Held by (viewers on the node; per city)",
          "Bitrate", "Edge age", "State", "Since", ""].map((t) => h("th", {}, t)))), tbody),
      player));

  const refresh = async () => {
    const body = await api("/v1/console/sessions?limit=200");
    if (!body.sessions.length) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No sessions.")));
      return;
    }
    count.textContent = body.total > body.sessions.length
      ? `${body.sessions.length} of ${body.total} sessions`
      : `${body.total} session${body.total === 1 ? "" : "s"}`;
    tbody.replaceChildren(...body.sessions.map((s) => h("tr", { "data-session": s.id, "data-key": s.key },
      h("td", {}, h("strong", {}, s.key), h("div", { class: "muted" }, s.id)),
      h("td", {}, s.node_id, h("div", { class: `t-${s.tier}` }, `${s.tier} · ${s.origin_city}`)),
      h("td", {},
        h("div", { "data-testid": "holders" }, s.holders.map((x) => h("div", {},
          `${x.id} (${x.role}, ${x.city}): ${x.viewers ?? "?"} viewers`))),
        h("div", { class: "muted", "data-testid": "cities" }, s.cities.map((c) =>
          `${c.city || "?"}: ${c.viewers} viewers (${c.nodes} node${c.nodes === 1 ? "" : "s"})`).join(" · "))),
      h("td", { "data-testid": "bitrate" }, s.bitrate ? `${Math.round(s.bitrate / 1000)} kb/s` : "—"),
      h("td", { "data-testid": "edge-age", title: "seconds since the end of the newest part or "
        + "segment the origin lists (EXT-X-PROGRAM-DATE-TIME)" }, fmtAge(s.edge_age)),
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

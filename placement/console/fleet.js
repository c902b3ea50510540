// Fleet: nodes by tier and city, on a map and in a table, with their state, load
// against capacity, streams and heartbeat age; cordon, drain, uncordon, decommission.
import { api, bar, flash, fmtTime, h, poll } from "/console/util.js";
import { fleetMap } from "/console/svg.js";

const TIER_ORDER = { edge: 0, mec: 1, cloud: 2 };

function actions(n, refresh) {
  const act = async (label, method, path, confirmText) => {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      await api(path, { method });
      flash(`${label}: ${n.id}`);
    } catch (err) {
      flash(`${label} ${n.id}: ${err.detail || err.message}`, true);
    }
    refresh();
  };
  const base = `/v1/nodes/${encodeURIComponent(n.id)}`;
  return [
    n.state !== "cordoned" &&
      h("button", { "data-action": "cordon", onclick: () => act("cordoned", "POST", `${base}/cordon`) }, "Cordon"),
    n.state !== "draining" &&
      h("button", { "data-action": "drain", onclick: () => act("draining", "POST", `${base}/drain`) }, "Drain"),
    n.state !== "ready" &&
      h("button", { "data-action": "uncordon", onclick: () => act("ready", "POST", `${base}/uncordon`) }, "Uncordon"),
    h("button", { class: "danger", "data-action": "decommission",
      onclick: () => act("decommissioned", "DELETE", base,
        `Decommission ${n.id}? It leaves the registry (it must be drained or cordoned, and hold no session).`) },
      "Decommission"),
  ];
}

function row(n, refresh) {
  const load = n.load || {};
  const cap = n.capacity || {};
  const slots = Math.max(load.transcodes || 0, n.reserved_slots || 0);
  const egress = Math.max(load.egress_mbps || 0, n.reserved_egress_mbps || 0);
  return h("tr", { "data-node": n.id, "data-status": n.status },
    h("td", {}, h("strong", {}, n.id), h("div", { class: "muted" }, `${n.isp} · ${n.region}`)),
    h("td", { class: `t-${n.tier}` }, n.tier),
    h("td", {}, n.city),
    h("td", {}, h("span", { class: `badge s-${n.status}`, "data-testid": "status" }, n.status)),
    h("td", {}, bar(slots, cap.slots), `${slots} / ${cap.slots}`),
    h("td", {}, bar(egress, cap.egress_mbps), `${egress.toFixed(1)} / ${cap.egress_mbps} Mb/s`),
    h("td", {}, bar(load.viewers || 0, cap.viewers), `${load.viewers || 0} / ${cap.viewers}`),
    h("td", {}, (n.streams || []).length ? n.streams.join(", ") : h("span", { class: "muted" }, "—")),
    h("td", { "data-testid": "heartbeat-age" }, `${n.heartbeat_age.toFixed(1)} s`),
    h("td", {}, actions(n, refresh)));
}

export function render(root) {
  const mapBox = h("div", { class: "panel" });
  const tbody = h("tbody");
  const audit = h("tbody");
  const summary = h("p", { class: "muted" });
  root.append(
    h("h1", {}, "Fleet"), summary,
    h("div", { class: "wide" }, h("table", { "data-testid": "fleet-table" },
      h("thead", {}, h("tr", {}, ["Node", "Tier", "City", "State", "Transcode units", "Egress",
        "Viewers", "Streams", "Heartbeat", ""].map((t) => h("th", {}, t)))),
      tbody)),
    h("div", { class: "cols" },
      mapBox,
      h("div", {}, h("h2", {}, "Recent operator actions"),
        h("table", {}, h("thead", {}, h("tr", {}, ["When", "Operator", "Action", "Target", "Status"]
          .map((t) => h("th", {}, t)))), audit))));

  const refresh = async () => {
    const [fleet, log] = await Promise.all([api("/v1/console/fleet"), api("/v1/audit?limit=8")]);
    const nodes = fleet.nodes.sort((a, b) => (TIER_ORDER[a.tier] - TIER_ORDER[b.tier])
      || a.city.localeCompare(b.city) || a.id.localeCompare(b.id));
    const counts = {};
    for (const n of nodes) counts[n.status] = (counts[n.status] || 0) + 1;
    summary.textContent = `${nodes.length} nodes · ` + Object.entries(counts)
      .map(([s, c]) => `${c} ${s}`).join(" · ") + ` · snapshot ${fleet.snapshot}` +
      (fleet.degraded ? " · DEGRADED (registry unreachable)" : "");
    const rows = [];
    let group = "";
    for (const n of nodes) {
      const g = `${n.tier} · ${n.city}`;
      if (g !== group) {
        rows.push(h("tr", { class: "group" }, h("td", { colspan: 10 }, g)));
        group = g;
      }
      rows.push(row(n, refresh));
    }
    tbody.replaceChildren(...rows);
    mapBox.replaceChildren(fleetMap(nodes, {
      onSelect: (id) => tbody.querySelector(`tr[data-node="${CSS.escape(id)}"]`)?.scrollIntoView(),
    }));
    audit.replaceChildren(...log.map((e) => h("tr", {},
      h("td", {}, fmtTime(e.at).slice(11)), h("td", {}, e.operator), h("td", {}, e.action),
      h("td", {}, Object.values(e.target).join(" ")),
      h("td", { class: e.ok ? "ok" : "error" }, e.status))));
  };
  return poll(refresh, 2000);
}

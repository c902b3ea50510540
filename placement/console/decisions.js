// Decisions: the decision log, live; a decision's explanation (nodes filtered out, by
// filter, at each fallback step; the survivors' scores term by term, weight x score);
// replay on the snapshot it was made on, or on today's fleet.
import { api, flash, fmtTime, h, poll } from "/console/util.js";

const entryKey = (e) => `${e.at}|${e.kind}|${e.request.tenant}/${e.request.stream}|${e.snapshot}`;

function explanation(ex, policy, kind) {
  const weights = policy ? (kind === "view" ? policy.viewer_weights : policy.weights) : {};
  const terms = Object.keys(weights).filter((k) => weights[k] > 0);
  return h("div", { "data-testid": "explanation" },
    h("p", {}, ex.node ? h("span", {}, "Chose ", h("strong", {}, ex.node), ` (${ex.tier}) at step ${ex.step}.`)
      : h("span", { class: "error" }, `No node: ${ex.reason}`), " ", h("span", { class: "muted" },
      `${ex.policy}, snapshot ${ex.snapshot}, ${fmtTime(ex.at)}`)),
    h("h2", {}, "Filtered, step by step"),
    h("table", { "data-testid": "fallback" },
      h("thead", {}, h("tr", {}, ["Step", "Considered", "Feasible", "Filtered out (by filter)", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, ex.fallback.map((s) => h("tr", {},
        h("td", {}, s.step), h("td", {}, s.considered), h("td", {}, s.feasible),
        h("td", {}, Object.entries(s.rejected).map(([f, n]) => `${f}: ${n}`).join(", ") || "—"),
        h("td", { class: "muted" }, s.summary))))),
    h("h2", {}, "Survivors' scores (weight × score)"),
    h("table", { "data-testid": "candidates" },
      h("thead", {}, h("tr", {}, ["Node", "Tier", ...terms.map((t) => `${t} (×${weights[t]})`), "Total"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ex.candidates.map((c) => h("tr", {},
        h("td", {}, c.node), h("td", { class: `t-${c.tier}` }, c.tier),
        terms.map((t) => h("td", {}, c.scores[t] === undefined ? "—"
          : `${(weights[t] * c.scores[t]).toFixed(3)} (${c.scores[t].toFixed(3)})`)),
        h("td", {}, h("strong", {}, c.total.toFixed(3))))))));
}

export function render(root) {
  const tbody = h("tbody");
  const detail = h("div", { class: "panel", "data-testid": "decision-detail" },
    h("p", { class: "muted" }, "Pick a decision to see why it was made, and to replay it."));
  const status = h("p", { class: "muted" });
  let selected = null;
  let policies = {};

  async function loadPolicies() {
    const hist = await api("/v1/policy/history");
    policies = Object.fromEntries(hist.versions.map((v) => [v.version, v.policy]));
  }

  async function replay(e, against) {
    const out = h("div", { "data-testid": `replay-${against}` }, h("p", { class: "muted" }, "replaying…"));
    detail.querySelector(`[data-testid=replay-${against}]`)?.replaceWith(out);
    detail.append(out);
    try {
      const r = await api(`/v1/decisions/replay?against=${against}`, { method: "POST", json: e });
      if (!(e.policy in policies)) await loadPolicies();
      const title = against === "fleet" ? "Replayed on today's fleet" : "Replayed on its snapshot";
      out.replaceChildren(h("h2", {}, `${title}: `, r.same
        ? h("span", { class: "ok", "data-testid": "same" }, `same node (${r.node})`)
        : h("span", { class: "error", "data-testid": "same" }, `different: ${r.node ?? "no node"} instead of ${e.node}`)),
      explanation(r.explanation, policies[e.policy], e.kind));
    } catch (err) {
      out.replaceChildren(h("p", { class: "error" }, `${against} replay: ${err.detail || err.message}`));
    }
  }

  function select(e) {
    selected = entryKey(e);
    for (const tr of tbody.querySelectorAll("tr")) tr.classList.toggle("selected", tr.dataset.entry === selected);
    const req = e.request;
    detail.replaceChildren(
      h("h2", {}, `${e.kind === "publish" ? "Placement" : "Route"} of ${req.tenant}/${req.stream}`),
      h("p", {}, `From ${req.location.city || "?"} (${req.location.isp || "?"}, ${req.location.region || "?"}),`,
        ` ${fmtTime(e.at)}: `, e.node ? h("strong", {}, `${e.node} (${e.tier}, step ${e.step})`) : "no node",
        ` · policy v${e.policy} · snapshot ${e.snapshot}`, e.degraded ? " · degraded" : ""),
      e.kind === "publish" ? h("p", {},
        h("button", { "data-action": "replay-snapshot", onclick: () => replay(e, "snapshot") }, "Replay on its snapshot"),
        h("button", { "data-action": "replay-fleet", onclick: () => replay(e, "fleet") }, "Replay on today's fleet"))
        : h("p", { class: "muted" }, "Viewer routes are explained when asked (GET /v1/route); replay re-runs placements."));
    if (e.kind === "publish") replay(e, "snapshot");
  }

  root.append(h("h1", {}, "Decisions"), status,
    h("div", { class: "cols detail-wide" },
      h("table", { "data-testid": "decisions-table" },
        h("thead", {}, h("tr", {}, ["Time", "Kind", "Stream", "From", "Node", "Tier", "Policy"].map((t) => h("th", {}, t)))),
        tbody),
      detail));

  loadPolicies().catch((err) => flash(err.message, true));
  const refresh = async () => {
    const log = await api("/v1/decisions?limit=100");
    status.textContent = `${log.length} most recent decisions (live, every 2 s)`;
    tbody.replaceChildren(...log.map((e) => h("tr", {
      "data-entry": entryKey(e), "data-kind": e.kind, class: entryKey(e) === selected ? "selected" : null,
      onclick: () => select(e) },
    h("td", {}, fmtTime(e.at).slice(11)), h("td", {}, e.kind),
    h("td", {}, `${e.request.tenant}/${e.request.stream}`), h("td", {}, e.request.location.city || "?"),
    h("td", {}, e.node || h("span", { class: "error" }, "none")), h("td", { class: `t-${e.tier}` }, e.tier || "—"),
    h("td", {}, `v${e.policy}`))));
  };
  return poll(refresh, 2000);
}

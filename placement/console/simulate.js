// Simulate: the policy simulator on the recorded fleet (or a synthetic one), the
// active policy beside the draft; figures drawn here from the JSON.
import { api, draft, flash, h, pct } from "/console/util.js";
import { lineChart, stackedBars } from "/console/svg.js";

const SHARES = ["local", "mec", "cloud", "remote", "unserved"];

export function render(root) {
  const fleet = h("select", { "aria-label": "fleet" },
    h("option", { value: "recorded" }, "recorded fleet (current snapshot)"),
    h("option", { value: "synthetic" }, "synthetic fleet"));
  const nodes = h("input", { type: "number", min: 3, max: 500, value: 60, "aria-label": "nodes" });
  const classes = h("input", { type: "number", min: 1, max: 2000, value: 200, "aria-label": "classes" });
  const seed = h("input", { type: "number", min: 0, value: 1, "aria-label": "seed" });
  const useDraft = h("input", { type: "checkbox", checked: Boolean(draft.get()), "aria-label": "with the draft policy" });
  const out = h("div", { "data-testid": "sim-result" });
  const run = h("button", { class: "primary", "data-action": "simulate" }, "Run");

  run.addEventListener("click", async () => {
    run.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "simulating…"));
    try {
      const r = await api("/v1/simulate", { method: "POST", json: {
        fleet: fleet.value, nodes: Number(nodes.value), classes: Number(classes.value),
        seed: Number(seed.value), policy: useDraft.checked ? draft.get() : "" } });
      show(r);
    } catch (err) {
      out.replaceChildren(h("p", { class: "error" }, `simulate: ${err.detail || err.message}`));
      flash(err.message, true);
    } finally {
      run.disabled = false;
    }
  });

  function show(r) {
    const keys = Object.keys(r.results[0].table);
    const table = h("table", { "data-testid": "sim-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), r.results.map((x) => h("th", {}, x.policy)))),
      h("tbody", {}, keys.map((k) => h("tr", {}, h("td", {}, k), r.results.map((x) => h("td", {}, x.table[k]))))));
    out.replaceChildren(
      h("p", { class: "muted" }, `${r.nodes} nodes in ${r.cities} cities, ${r.classes} classes, seed ${r.seed} (${r.fleet} fleet), ${r.seconds} s`),
      h("div", { class: "plots" }, h("div", {}, h("h2", {}, "Local-serve ratio by hour of day"),
      lineChart(r.results.map((x) => ({ name: x.policy,
        points: x.hourly_local.map((v, i) => [i, v]) })), { yMax: 1, xLabel: "hour",
        yFormat: (v) => pct(v), xFormat: (v) => `${Math.round(v)}h`, testid: "plot-hourly" })),
      h("div", {}, h("h2", {}, "Viewers over the day"),
      lineChart(r.results.flatMap((x) => [
        { name: `${x.policy} local`, points: x.timeline.map((p) => [p.t / 3600, p.local]) },
        { name: `${x.policy} all`, points: x.timeline.map((p) => [p.t / 3600, SHARES.reduce((a, k) => a + p[k], 0)]) },
      ]), { xLabel: "hour", xFormat: (v) => `${v.toFixed(0)}h`, yFormat: (v) => v.toFixed(0), testid: "plot-timeline" })),
      h("div", {}, h("h2", {}, "How viewers were served (viewer-seconds)"),
        stackedBars(r.results.map((x) => ({ name: x.policy, parts: x.shares })), SHARES, { testid: "plot-shares" }))),
      table);
  }

  root.append(h("h1", {}, "Simulate"),
    h("p", { class: "muted" }, "Runs placement's simulator on the service (bounded: 500 nodes, 2000 classes, one run at a time)."),
    h("p", {}, fleet, " ", h("label", { class: "inline" }, "nodes ", nodes),
      h("label", { class: "inline" }, "classes ", classes), h("label", { class: "inline" }, "seed ", seed),
      h("label", { class: "inline" }, useDraft, " with the draft policy from the Policy page"), run),
    out);
}

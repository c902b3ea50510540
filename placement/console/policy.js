// Policy: a YAML editor validated as you type (server-side, debounced), a dry run of
// the draft against the last N logged placements, apply (a new version), roll back to
// any earlier version, and the history of versions with operator and time.
import { api, draft, flash, fmtTime, h, pct } from "/console/util.js";

export function render(root) {
  const editor = h("textarea", { spellcheck: "false", "data-testid": "policy-editor",
    "aria-label": "policy YAML" });
  const validity = h("p", { "data-testid": "validity", class: "muted" }, "…");
  const limit = h("input", { type: "number", min: 1, max: 10000, value: 200, "aria-label": "decisions to replay" });
  const dry = h("div", { "data-testid": "dry-run" });
  const history = h("tbody");
  const active = h("p", { class: "muted" });
  const applyBtn = h("button", { class: "primary", "data-action": "apply", disabled: true }, "Apply");
  let timer = null;
  let seq = 0;

  async function validate() {
    const mine = ++seq;
    draft.set(editor.value);
    try {
      const r = await api("/v1/policy/validate", { method: "POST", body: editor.value });
      if (mine !== seq) return;
      if (!r.valid) {
        validity.className = "error";
        validity.textContent = `✗ ${r.field}: ${r.message}`;
        applyBtn.disabled = true;
      } else {
        validity.className = r.applicable ? "ok" : "error";
        validity.textContent = `✓ valid: ${r.label} (${r.note})`;
        applyBtn.disabled = !r.applicable;
      }
    } catch (err) {
      if (mine === seq) { validity.className = "error"; validity.textContent = err.message; }
    }
  }

  editor.addEventListener("input", () => {
    clearTimeout(timer);
    validity.className = "muted";
    validity.textContent = "checking…";
    timer = setTimeout(validate, 300);
  });

  async function dryRun() {
    dry.replaceChildren(h("p", { class: "muted" }, "replaying…"));
    try {
      const r = await api(`/v1/policy/dry-run?limit=${Number(limit.value) || 200}`, { method: "POST", body: editor.value });
      const shifts = Object.entries(r.shifts);
      dry.replaceChildren(
        h("p", {}, h("strong", { "data-testid": "moved" }, `${r.changed} of ${r.evaluated}`),
          ` placements would move under ${r.candidate} (now ${r.current}), on snapshot ${r.snapshot}.`),
        h("p", { "data-testid": "local-ratio" }, `Local-serve ratio: ${pct(r.local_ratio_before)} → ${pct(r.local_ratio_after)}`,
          ` · refused: ${r.rejected_before} → ${r.rejected_after}`),
        shifts.length ? h("table", { "data-testid": "shifts" },
          h("thead", {}, h("tr", {}, h("th", {}, "From tier"), h("th", {}, "To tier"), h("th", {}, "Sessions"))),
          h("tbody", {}, shifts.map(([k, n]) => { const [a, b] = k.split("->");
            return h("tr", {}, h("td", { class: `t-${a}` }, a), h("td", { class: `t-${b}` }, b), h("td", {}, n)); })))
          : h("p", { class: "muted" }, "No placement would change."),
        h("p", { class: "muted" }, "By tier, before: ", JSON.stringify(r.tiers_before), " · after: ", JSON.stringify(r.tiers_after)));
    } catch (err) {
      dry.replaceChildren(h("p", { class: "error" }, `dry run: ${err.detail || err.message}`));
    }
  }

  async function apply() {
    try {
      const r = await api("/v1/policy", { method: "PUT", body: editor.value });
      flash(`applied ${r.active}`);
      await loadHistory(false);
      validate();
    } catch (err) {
      flash(`apply: ${err.detail || err.message}`, true);
    }
  }

  async function rollback(v) {
    if (!window.confirm(`Roll back to version ${v}?`)) return;
    try {
      const r = await api(`/v1/policy/rollback/${v}`, { method: "POST" });
      flash(`rolled back to ${r.active}`);
      await loadHistory(false);
      validate();
    } catch (err) {
      flash(`roll back: ${err.detail || err.message}`, true);
    }
  }

  async function loadHistory(fillEditor) {
    const hist = await api("/v1/policy/history");
    const current = hist.versions.find((v) => v.version === hist.active);
    active.textContent = `Active: ${current ? current.label : hist.active}`;
    if (fillEditor) {
      editor.value = draft.get() || (current ? current.yaml : "");
      validate();
    }
    const byVersion = {};
    for (const a of hist.history) (byVersion[a.version] ||= []).push(a);
    history.replaceChildren(...hist.versions.slice().reverse().map((v) => h("tr", { "data-version": v.version },
      h("td", {}, v.label, v.version === hist.active ? h("strong", { class: "ok" }, " (active)") : null),
      h("td", {}, (byVersion[v.version] || []).map((a) => h("div", {},
        `${a.rollback ? "rolled back" : "applied"} by ${a.operator || "another instance"} ${a.at ? fmtTime(a.at) : ""}`))),
      h("td", {},
        h("button", { onclick: () => { editor.value = v.yaml; validate(); } }, "Edit a copy"),
        v.version !== hist.active && h("button", { "data-action": "rollback", onclick: () => rollback(v.version) }, "Roll back")))));
  }

  root.append(h("h1", {}, "Policy"), active,
    h("div", { class: "cols" },
      h("div", {}, editor, validity,
        h("p", {}, applyBtn,
          h("label", { class: "inline" }, " Dry run on the last ", limit, " decisions "),
          h("button", { "data-action": "dry-run", onclick: dryRun }, "Dry run"),
          h("button", { onclick: () => { draft.set(""); loadHistory(true); } }, "Reset to active"))),
      h("div", {}, h("div", { class: "panel" }, h("h2", {}, "Dry run"), dry),
        h("h2", {}, "Versions"),
        h("table", { "data-testid": "history" },
          h("thead", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "Activations"), h("th", {}, ""))), history))));
  applyBtn.addEventListener("click", apply);
  loadHistory(true).catch((err) => flash(err.message, true));
  return () => clearTimeout(timer);
}

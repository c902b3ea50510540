// Offline drawings: the fleet map (equirectangular, fitted to the nodes' lat/lon, no
// tiles) and small line and bar charts from the API's JSON figures.
import { h } from "/console/util.js";

export const TIER_COLOURS = { edge: "#1b9e77", mec: "#d95f02", cloud: "#7570b3" };
export const SERIES = ["#2357c6", "#d95f02", "#1b9e77", "#7570b3", "#c62828"];
const STATUS_RING = { live: "#2e7d32", stale: "#b26a00", dead: "#c62828", draining: "#8e24aa",
  cordoned: "#546e7a" };

export function fleetMap(nodes, { width = 560, height = 360, onSelect } = {}) {
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    "aria-label": "map of the fleet", "data-testid": "fleet-map" });
  const pad = 40;
  if (!nodes.length) {
    svg.append(h("text", { x: 20, y: 30 }, "no nodes registered"));
    return svg;
  }
  let [lat0, lat1] = [Math.min(...nodes.map((n) => n.lat)), Math.max(...nodes.map((n) => n.lat))];
  let [lon0, lon1] = [Math.min(...nodes.map((n) => n.lon)), Math.max(...nodes.map((n) => n.lon))];
  // At least a degree or so each way, and the same scale on both axes (cos(lat) for lon).
  const midLat = (lat0 + lat1) / 2;
  const k = Math.cos((midLat * Math.PI) / 180) || 1;
  const span = Math.max(1, lat1 - lat0, (lon1 - lon0) * k) * 1.15;
  const scale = Math.min((width - 2 * pad) / (span / k), (height - 2 * pad) / span);
  const cx = (lon0 + lon1) / 2;
  const cy = midLat;
  const x = (lon) => width / 2 + (lon - cx) * scale;
  const y = (lat) => height / 2 - (lat - cy) * scale * k;
  // Graticule: a line every whole degree (or 10 when zoomed out).
  const step = span > 20 ? 10 : span > 6 ? 2 : 1;
  const g = h("g", { class: "grid" });
  for (let la = Math.floor((cy - span) / step) * step; la <= cy + span; la += step) {
    g.append(h("line", { x1: 0, x2: width, y1: y(la), y2: y(la) }));
    g.append(h("text", { x: 2, y: y(la) - 2, fill: "#99a" }, `${la}°`));
  }
  for (let lo = Math.floor((cx - span / k) / step) * step; lo <= cx + span / k; lo += step) {
    g.append(h("line", { x1: x(lo), x2: x(lo), y1: 0, y2: height }));
  }
  svg.append(g);
  const byPlace = new Map();
  for (const n of nodes) {
    const key = `${n.lat.toFixed(2)},${n.lon.toFixed(2)}`;
    const i = byPlace.get(key) || 0;
    byPlace.set(key, i + 1);
    const px = x(n.lon) + i * 9;
    const py = y(n.lat);
    const dot = h("circle", { cx: px, cy: py, r: 7, fill: TIER_COLOURS[n.tier] || "#999",
      stroke: STATUS_RING[n.status] || "#333", "stroke-width": 3, "data-node": n.id,
      style: onSelect ? "cursor:pointer" : null, onclick: onSelect ? () => onSelect(n.id) : null },
      h("title", {}, `${n.id} (${n.tier}, ${n.city}): ${n.status}`));
    svg.append(dot);
    if (i === 0) svg.append(h("text", { x: px + 10, y: py + 4 }, n.city));
  }
  const legend = h("g", {});
  Object.entries(TIER_COLOURS).forEach(([tier, colour], i) => {
    legend.append(h("circle", { cx: 12, cy: height - 14 - 16 * i, r: 5, fill: colour }));
    legend.append(h("text", { x: 22, y: height - 10 - 16 * i }, tier));
  });
  svg.append(legend);
  return svg;
}

// Lines over a shared x axis: series = [{name, points: [[x, y], ...]}].
export function lineChart(series, { width = 520, height: plotHeight = 220, yMax, xLabel = "", yLabel = "",
  xFormat = String, yFormat = String, testid } = {}) {
  let height = plotHeight;
  const svg = h("svg", { viewBox: `0 0 ${width} ${plotHeight + 14 * series.length}`, width: "100%",
    role: "img", "aria-label": yLabel, "data-testid": testid });
  // The legend goes under the x axis, one line per series.
  const m = { l: 48, r: 12, t: 12, b: 44 + 14 * series.length };
  height += 14 * series.length;
  const pts = series.flatMap((s) => s.points).filter((p) => p[1] !== null);
  if (!pts.length) return svg;
  const x0 = Math.min(...pts.map((p) => p[0]));
  const x1 = Math.max(...pts.map((p) => p[0]));
  const top = yMax ?? (Math.max(...pts.map((p) => p[1])) || 1);
  const sx = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * (width - m.l - m.r);
  const sy = (v) => height - m.b - (v / top) * (height - m.t - m.b);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    svg.append(h("line", { class: "grid", x1: m.l, x2: width - m.r, y1: sy(v), y2: sy(v) }));
    svg.append(h("text", { x: 4, y: sy(v) + 4 }, yFormat(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const v = x0 + ((x1 - x0) * i) / 4;
    svg.append(h("text", { x: sx(v) - 10, y: height - m.b + 14 }, xFormat(v)));
  }
  svg.append(h("text", { x: width / 2 - 30, y: height - m.b + 30 }, xLabel));
  series.forEach((s, i) => {
    const ok = s.points.filter((p) => p[1] !== null);
    svg.append(h("polyline", { fill: "none", stroke: SERIES[i % SERIES.length], "stroke-width": 2,
      points: ok.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
      "data-series": s.name }));
    const ly = height - m.b + 44 + 14 * i;
    svg.append(h("line", { x1: m.l, x2: m.l + 18, y1: ly - 4, y2: ly - 4, "stroke-width": 3,
      stroke: SERIES[i % SERIES.length] }));
    svg.append(h("text", { x: m.l + 24, y: ly }, s.name));
  });
  return svg;
}

// Horizontal stacked bars, one per row: rows = [{name, parts: {key: share}}].
export function stackedBars(rows, keys, { width = 520, testid } = {}) {
  const rowH = 26;
  const height = rows.length * rowH + 30;
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    "data-testid": testid });
  const left = 130;
  rows.forEach((row, i) => {
    let at = left;
    svg.append(h("text", { x: 4, y: i * rowH + 17 }, row.name));
    keys.forEach((key, j) => {
      const w = (row.parts[key] || 0) * (width - left - 10);
      svg.append(h("rect", { x: at, y: i * rowH + 4, width: Math.max(0, w), height: rowH - 8,
        fill: SERIES[j % SERIES.length] }, h("title", {}, `${key}: ${((row.parts[key] || 0) * 100).toFixed(1)}%`)));
      at += w;
    });
  });
  keys.forEach((key, j) => {
    svg.append(h("rect", { x: left + 75 * j, y: height - 18, width: 10, height: 10,
      fill: SERIES[j % SERIES.length] }));
    svg.append(h("text", { x: left + 14 + 75 * j, y: height - 9 }, key));
  });
  return svg;
}

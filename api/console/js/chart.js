// A line chart of one metric drawn as SVG, no library: raw points (flagged ones marked in red,
// with a tooltip) or buckets (average line, min–max band).

import { s } from "./dom.js";

const W = 800;
const H = 260;
const PAD = { l: 56, r: 12, t: 12, b: 28 };

const num = (v) => (typeof v === "number" ? v : typeof v === "boolean" ? Number(v) : NaN);

/** points: [{ t: Date, v: number, flagged: bool }]; buckets: [{ t, avg, min, max }]. */
export function chart({ points = [], buckets = null, from, to, label }) {
  const series = buckets
    ? buckets.filter((b) => Number.isFinite(b.avg))
    : points.filter((p) => Number.isFinite(num(p.v)));
  const values = buckets ? series.flatMap((b) => [b.min ?? b.avg, b.max ?? b.avg]) : series.map((p) => num(p.v));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
  if (!series.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "No numeric values in this range."));
    return svg;
  }
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) { lo -= 1; hi += 1; }
  const t0 = (from || series[0].t).getTime();
  const t1 = Math.max((to || series[series.length - 1].t).getTime(), t0 + 1);
  const x = (t) => PAD.l + ((t.getTime() - t0) / (t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => PAD.t + (1 - (v - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
  svg.append(
    s("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "grid" }),
    s("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "grid" }),
    s("text", { x: PAD.l - 6, y: PAD.t + 10, "text-anchor": "end", class: "axis" }, fmt(hi)),
    s("text", { x: PAD.l - 6, y: H - PAD.b, "text-anchor": "end", class: "axis" }, fmt(lo)),
    s("text", { x: PAD.l, y: H - 8, class: "axis" }, new Date(t0).toLocaleString()),
    s("text", { x: W - PAD.r, y: H - 8, "text-anchor": "end", class: "axis" }, new Date(t1).toLocaleString()));
  if (buckets) {
    const band = series.map((b) => `${x(b.t)},${y(b.max ?? b.avg)}`)
      .concat(series.slice().reverse().map((b) => `${x(b.t)},${y(b.min ?? b.avg)}`));
    svg.append(
      s("polygon", { points: band.join(" "), class: "band" }),
      s("polyline", { points: series.map((b) => `${x(b.t)},${y(b.avg)}`).join(" "), class: "line" }));
  } else {
    svg.append(s("polyline", { points: series.map((p) => `${x(p.t)},${y(num(p.v))}`).join(" "), class: "line" }));
    for (const p of series) {
      svg.append(s("circle", { cx: x(p.t), cy: y(num(p.v)), r: p.flagged ? 4.5 : 2, class: p.flagged ? "flagged" : "dot" },
        s("title", null, `${p.t.toLocaleString()}: ${p.v}${p.flagged ? " (flagged: outside the type's min/max)" : ""}`)));
    }
  }
  return svg;
}

function fmt(v) {
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v * 100) / 100) : v.toPrecision(4);
}

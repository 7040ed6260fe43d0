// Devices: the paged list with its filters, and one device's page — its latest values, a chart
// of a metric over a chosen range (raw or bucketed), both kept live over the WebSocket.

import { all, api, live, t } from "./api.js";
import { attempt, field, h, pager, put, say, select, table, when } from "./dom.js";
import { chart } from "./chart.js";

export async function deviceList(root) {
  const typeNames = new Map((await all(t("/device-types"))).map((x) => [x.id, x.name]));
  const pattern = h("input", { type: "text", spellcheck: "false", autocomplete: "off", placeholder: "SDE11/+/UTILITIES/#" });
  const unassigned = h("input", { type: "checkbox" });
  const body = h("div");
  const p = pager(async (cursor) => {
    const page = await api("GET", t("/devices"), {
      query: { pattern: pattern.value.trim(), unassigned: unassigned.checked || null, limit: 50, cursor },
    });
    put(body, table(["Device", "External id", "Type", "Status", "Last seen"], page.items.map((d) =>
      h("tr", null,
        h("td", null, h("a", { href: `#/devices/${d.id}` }, d.name)),
        h("td", { class: "mono" }, d.external_id || ""),
        h("td", null, d.device_type_id ? h("a", { href: `#/types/${d.device_type_id}` }, typeNames.get(d.device_type_id) || "type") : "unassigned"),
        h("td", null, d.status),
        h("td", null, when(d.last_seen_at)))), "Devices"));
    return page.next_cursor;
  });
  const form = h("form", { class: "row", role: "search" },
    field("Topic pattern", pattern),
    h("div", { class: "field check" }, unassigned, h("label", { for: (unassigned.id = "only-unassigned") }, "Unassigned only")),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => { e.preventDefault(); p.reset(); });
  put(root, h("h1", null, "Devices"), form, body, p.el);
  await p.reset();
}

const RANGES = [["15m", 15 * 60], ["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400], ["30d", 30 * 86400]];

export async function devicePage(root, id) {
  const device = await api("GET", t(`/devices/${id}`));
  const type = device.device_type_id ? await api("GET", t(`/device-types/${device.device_type_id}`)) : null;
  const schema = (type && type.telemetry_schema) || {};
  const latest = await api("GET", t(`/devices/${id}/latest`));
  const types = await all(t("/device-types"));

  const outside = (metric, v) => {
    const spec = schema[metric];
    return !!spec && typeof v === "number" && ((spec.min != null && v < spec.min) || (spec.max != null && v > spec.max));
  };

  const latestBody = h("div");
  const drawLatest = () => put(latestBody, table(["Metric", "Value", "Unit", "At"],
    Object.entries(latest).sort(([a], [b]) => a.localeCompare(b)).map(([metric, l]) =>
      h("tr", { class: l.flagged ? "flagged" : null, dataset: { metric } },
        h("td", null, metric),
        h("td", { class: "num" }, String(l.value), l.flagged ? h("span", { class: "flag", title: "Outside the type's min/max" }, " ⚑ flagged") : null),
        h("td", null, (schema[metric] && schema[metric].unit) || ""),
        h("td", null, when(l.ts)))), "Latest values"));
  drawLatest();

  const metrics = [...new Set([...Object.keys(latest), ...Object.keys(schema)])].sort();
  const metricSel = h("select", null, metrics.map((m) => h("option", { value: m }, m)));
  const rangeSel = h("select", null, RANGES.map(([name], i) => h("option", { value: String(i), selected: i === 1 }, name)));
  const modeSel = h("select", null,
    h("option", { value: "" }, "Raw points"),
    ["1m", "5m", "15m", "1h", "1d"].map((b) => h("option", { value: b }, `Buckets of ${b}`)));
  const chartBox = h("div", { class: "chartbox" });
  let shown = { points: [], buckets: null, from: null };

  const draw = () => attempt(async () => {
    if (!metricSel.value) return put(chartBox, h("p", null, "No metrics yet."));
    const from = new Date(Date.now() - RANGES[Number(rangeSel.value)][1] * 1000);
    const answer = await api("GET", t(`/devices/${id}/telemetry`), {
      query: { metric: metricSel.value, from: from.toISOString(), bucket: modeSel.value, limit: 10000 },
    });
    const items = answer.items.slice().reverse();
    shown = modeSel.value
      ? { buckets: items.map((b) => ({ t: new Date(b.bucket), avg: b.avg, min: b.min, max: b.max })), points: [], from }
      : { points: items.map((p) => ({ t: new Date(p.ts), v: p.value, flagged: p.flagged })), buckets: null, from };
    render();
  });
  const render = () => put(chartBox, chart({ ...shown, to: new Date(), label: `${metricSel.value} of ${device.name}` }));

  const typeSel = select(types, { empty: "(none)", value: device.device_type_id || "" });
  const classify = h("form", { class: "row" }, field("Device type", typeSel), h("button", { type: "submit" }, "Save type"));
  classify.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => {
      await api("PATCH", t(`/devices/${id}`), { body: { device_type_id: typeSel.value || null } });
      say("Device type saved.", "ok");
    });
  });

  const liveState = h("span", { class: "badge" }, "connecting…");
  const stop = live({
    deviceId: id,
    onState: (state) => { liveState.textContent = state; },
    onEvent: (event) => {
      if (event.type !== "telemetry") return;
      for (const [metric, value] of Object.entries(event.metrics)) {
        latest[metric] = { ts: event.ts, value, flagged: outside(metric, value) };
        if (metric === metricSel.value && !shown.buckets) {
          shown.points.push({ t: new Date(event.ts), v: value, flagged: outside(metric, value) });
          render();
        }
      }
      drawLatest();
    },
  });

  for (const el of [metricSel, rangeSel, modeSel]) el.addEventListener("change", draw);
  put(root,
    h("h1", null, device.name),
    h("dl", { class: "facts" },
      h("dt", null, "External id"), h("dd", { class: "mono" }, device.external_id || "—"),
      h("dt", null, "Type"), h("dd", null, type ? h("a", { href: `#/types/${type.id}` }, type.name) : "unassigned"),
      h("dt", null, "Status"), h("dd", null, device.status),
      h("dt", null, "Last seen"), h("dd", null, when(device.last_seen_at)),
      h("dt", null, "Live"), h("dd", null, liveState)),
    classify,
    h("section", null, h("h2", null, "Latest values"), latestBody),
    h("section", null, h("h2", null, "Chart"),
      h("div", { class: "row" }, field("Metric", metricSel), field("Range", rangeSel), field("Resolution", modeSel)),
      chartBox));
  await draw();
  return stop;
}

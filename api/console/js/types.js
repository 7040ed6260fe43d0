// Device types: the list, creating one, and one type's page — its telemetry schema (metric,
// unit, min, max) edited as a table, beside the metrics its devices actually send: sent but not
// in the schema (adopted with one click), in the schema but never sent.

import { api, t } from "./api.js";
import { attempt, field, h, pager, put, say, table, when } from "./dom.js";

export async function typeList(root) {
  const body = h("div");
  const p = pager(async (cursor) => {
    const page = await api("GET", t("/device-types"), { query: { limit: 50, cursor } });
    put(body, table(["Device type", "Metrics in schema", "Created"], page.items.map((x) =>
      h("tr", null,
        h("td", null, h("a", { href: `#/types/${x.id}` }, x.name)),
        h("td", null, Object.keys(x.telemetry_schema || {}).join(", ")),
        h("td", null, when(x.created_at)))), "Device types"));
    return page.next_cursor;
  });
  const name = h("input", { type: "text", required: true, autocomplete: "off" });
  const description = h("input", { type: "text", autocomplete: "off" });
  const form = h("form", { class: "card" }, h("h2", null, "New device type"),
    h("div", { class: "row" }, field("Name", name), field("Description", description), h("button", { type: "submit" }, "Create")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => {
      const created = await api("POST", t("/device-types"), { body: { name: name.value, description: description.value || null } });
      location.hash = `#/types/${created.id}`;
    });
  });
  put(root, h("h1", null, "Device types"), body, p.el, form);
  await p.reset();
}

export async function typePage(root, id) {
  let type = await api("GET", t(`/device-types/${id}`));
  const rows = h("tbody");
  const discovered = h("div");

  const row = (metric, spec = {}) => {
    const cells = {
      metric: h("input", { type: "text", value: metric, "aria-label": "Metric", required: true }),
      unit: h("input", { type: "text", value: spec.unit ?? "", "aria-label": `Unit of ${metric || "new metric"}` }),
      min: h("input", { type: "number", step: "any", value: spec.min ?? "", "aria-label": `Min of ${metric || "new metric"}` }),
      max: h("input", { type: "number", step: "any", value: spec.max ?? "", "aria-label": `Max of ${metric || "new metric"}` }),
    };
    const tr = h("tr", null, Object.values(cells).map((c) => h("td", null, c)),
      h("td", null, h("button", { type: "button", "aria-label": `Remove ${metric || "new metric"}`, onclick: () => tr.remove() }, "Remove")));
    tr.cells_ = cells;
    return tr;
  };
  const drawSchema = () => put(rows, Object.entries(type.telemetry_schema || {}).map(([m, spec]) => row(m, spec)));
  const collect = () => {
    const schema = {};
    for (const tr of rows.children) {
      const c = tr.cells_;
      const metric = c.metric.value.trim();
      if (!metric) continue;
      const spec = {};
      if (c.unit.value.trim()) spec.unit = c.unit.value.trim();
      if (c.min.value !== "") spec.min = Number(c.min.value);
      if (c.max.value !== "") spec.max = Number(c.max.value);
      schema[metric] = spec;
    }
    return schema;
  };
  const save = async (schema) => {
    type = await api("PATCH", t(`/device-types/${id}`), { body: { telemetry_schema: schema } });
    drawSchema();
    await drawDiscovered();
  };

  const list = (title, metrics, action) => h("div", { class: "card" }, h("h3", null, title),
    metrics.length ? h("ul", { class: "metrics" }, metrics.map((m) => h("li", null, h("span", { class: "mono" }, m), action ? action(m) : null))) : h("p", { class: "empty" }, "None."));
  const drawDiscovered = async () => {
    const d = await api("GET", t(`/device-types/${id}/discovered-metrics`));
    put(discovered,
      list("Sent, not in the schema", d.sent_not_in_schema, (m) => h("button", {
        type: "button",
        "aria-label": `Adopt ${m}`,
        onclick: () => attempt(async () => { await save({ ...(type.telemetry_schema || {}), [m]: {} }); say(`${m} added to the schema.`, "ok"); }),
      }, "Adopt")),
      list("In the schema, never sent", d.in_schema_never_sent),
      list("In the schema and sent", d.in_schema_and_sent));
  };

  const name = h("input", { type: "text", value: type.name, required: true });
  const description = h("input", { type: "text", value: type.description ?? "" });
  const meta = h("form", { class: "row" }, field("Name", name), field("Description", description), h("button", { type: "submit" }, "Save name"));
  meta.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => {
      type = await api("PATCH", t(`/device-types/${id}`), { body: { name: name.value, description: description.value || null } });
      put(root.querySelector("h1"), type.name);
      say("Saved.", "ok");
    });
  });
  const schemaForm = h("form", null,
    h("div", { class: "scroll" }, h("table", null, h("caption", null, "Telemetry schema"),
      h("thead", null, h("tr", null, ["Metric", "Unit", "Min", "Max", ""].map((x) => h("th", { scope: "col" }, x)))), rows)),
    h("div", { class: "row" },
      h("button", { type: "button", onclick: () => { const r = row(""); rows.append(r); r.cells_.metric.focus(); } }, "Add metric"),
      h("button", { type: "submit", class: "primary" }, "Save schema")));
  schemaForm.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => { await save(collect()); say("Schema saved.", "ok"); });
  });

  drawSchema();
  put(root, h("h1", null, type.name), meta,
    h("div", { class: "split" },
      h("section", null, h("h2", null, "Schema"), schemaForm),
      h("section", null, h("h2", null, "Discovered metrics"), discovered)),
    h("p", null, h("a", { href: `#/devices` }, "Devices")));
  await drawDiscovered();
}

// The classification inbox: unassigned devices grouped by topic shape and metric set (computed
// by the API, so it works at 100,000 devices), a pattern filter, a preview of exactly what an
// assignment would change (classify with dry_run), the assignment itself in one request, and
// "save as rule" so that the next device of the same shape arrives classified.

import { all, api, t } from "./api.js";
import { attempt, field, h, pager, put, say, select, table, when } from "./dom.js";

export async function inbox(root) {
  const [types, orgs, sites, groups] = await Promise.all([
    all(t("/device-types")), all(t("/organizations")), all(t("/sites")), all(t("/device-groups")),
  ]);

  const pattern = h("input", { type: "text", placeholder: "SDE11/+/UTILITIES/BOILER/+", spellcheck: "false", autocomplete: "off" });
  const typeSel = select(types, { empty: "(keep)" });
  const orgSel = select(orgs, { empty: "(keep)" });
  const siteSel = select(sites, { empty: "(keep)" });
  const groupSel = select(groups, { empty: "(keep)" });
  const priority = h("input", { type: "number", value: "0", step: "1" });
  const shapesBody = h("div");
  const devicesBody = h("div");
  const preview = h("div", { class: "preview" });

  const targets = () => {
    const body = {};
    if (typeSel.value) body.device_type_id = typeSel.value;
    if (orgSel.value) body.organization_id = orgSel.value;
    if (siteSel.value) body.site_id = siteSel.value;
    if (groupSel.value) body.device_group_id = groupSel.value;
    return body;
  };
  const need = () => {
    if (!pattern.value.trim()) throw new Error("Enter a topic pattern, or pick a group from the list.");
    if (!Object.keys(targets()).length) throw new Error("Choose a device type, organization, site or device group to assign.");
  };

  const shapes = pager(async (cursor) => {
    const page = await api("GET", t("/device-shapes"), { query: { unassigned: true, limit: 50, cursor } });
    put(shapesBody, table(["Topic shape", "Metrics", "Devices", "Last seen", "Example", ""], page.items.map((g) =>
      h("tr", null,
        h("td", { class: "mono" }, g.shape),
        h("td", null, (g.metrics || []).join(", ")),
        h("td", { class: "num" }, String(g.count)),
        h("td", null, when(g.last_seen_at)),
        h("td", { class: "mono" }, g.example_external_id || ""),
        h("td", null, h("button", {
          type: "button",
          "aria-label": `Select ${g.shape}`,
          onclick: () => { pattern.value = g.shape; devices.reset(); typeSel.focus(); },
        }, "Select")))), "Unassigned devices by topic shape and metrics"));
    return page.next_cursor;
  });

  const devices = pager(async (cursor) => {
    const page = await api("GET", t("/devices"), {
      query: { unassigned: true, pattern: pattern.value.trim(), limit: 50, cursor },
    });
    put(devicesBody, table(["Device", "External id", "Last seen"], page.items.map((d) =>
      h("tr", null,
        h("td", null, h("a", { href: `#/devices/${d.id}` }, d.name)),
        h("td", { class: "mono" }, d.external_id || ""),
        h("td", null, when(d.last_seen_at)))), pattern.value.trim() ? "Unassigned devices matching the pattern" : "Unassigned devices"));
    return page.next_cursor;
  });

  const classify = (dryRun) => api("POST", t("/devices/classify"), {
    body: { pattern: pattern.value.trim(), ...targets(), dry_run: dryRun, only_unassigned: true },
  });

  const showResult = (title, answer) => put(preview,
    h("h3", null, title),
    table(["Device", "External id"], answer.devices.map((d) =>
      h("tr", null, h("td", null, h("a", { href: `#/devices/${d.id}` }, d.name)), h("td", { class: "mono" }, d.external_id || "")))),
    answer.count > answer.devices.length ? h("p", null, `…and ${answer.count - answer.devices.length} more.`) : null);

  const filterForm = h("form", { class: "row", role: "search" },
    field("Topic pattern (+ one level, # the rest)", pattern),
    h("button", { type: "submit" }, "Filter"));
  filterForm.addEventListener("submit", (e) => { e.preventDefault(); devices.reset(); });

  const assignForm = h("form", { class: "card" },
    h("h2", null, "Assign the matching devices"),
    h("div", { class: "row" }, field("Device type", typeSel), field("Organization", orgSel), field("Site", siteSel), field("Device group", groupSel)),
    h("div", { class: "row" },
      h("button", { type: "button", onclick: () => attempt(async () => {
        need();
        const answer = await classify(true);
        showResult(`Preview: ${answer.count} device(s) would change`, answer);
        say(`Preview: ${answer.count} device(s) would change. Nothing was changed.`);
      }) }, "Preview"),
      h("button", { type: "submit", class: "primary" }, "Assign"),
      field("Rule priority", priority),
      h("button", { type: "button", onclick: () => attempt(async () => {
        need();
        const rule = await api("POST", t("/classification-rules"), {
          body: { pattern: pattern.value.trim(), ...targets(), priority: Number(priority.value) || 0 },
        });
        say(`Rule saved: new devices matching ${rule.pattern} will arrive classified. Existing ones are assigned with "Assign".`, "ok");
      }) }, "Save as rule")),
    preview);
  assignForm.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => {
      need();
      const answer = await classify(false);
      showResult(`Assigned ${answer.count} device(s)`, answer);
      say(`Assigned ${answer.count} device(s).`, "ok");
      await Promise.all([shapes.reload(), devices.reset()]);
    });
  });

  put(root,
    h("h1", null, "Inbox"),
    h("p", { class: "hint" }, "Devices the bridge discovered that have no device type yet, grouped by topic shape. Select a group or type a pattern, preview, then assign or save the selection as a rule."),
    h("section", { "aria-labelledby": "shapes-h" }, h("h2", { id: "shapes-h" }, "Groups"), shapesBody, shapes.el),
    h("section", { "aria-labelledby": "devices-h" }, h("h2", { id: "devices-h" }, "Devices"), filterForm, devicesBody, devices.el),
    assignForm);
  await Promise.all([shapes.reset(), devices.reset()]);
}

// Classification rules: what the API applies to each new device, by priority; applying one to
// the devices that exist already (preview first), and deleting.

import { all, api, t } from "./api.js";
import { attempt, h, pager, put, say, table, when } from "./dom.js";

export async function rules(root) {
  const [types, orgs, sites, groups] = await Promise.all([
    all(t("/device-types")), all(t("/organizations")), all(t("/sites")), all(t("/device-groups")),
  ]);
  const names = new Map([...types, ...orgs, ...sites, ...groups].map((x) => [x.id, x.name]));
  const target = (r) => [
    r.device_type_id && `type ${names.get(r.device_type_id) || r.device_type_id}`,
    r.organization_id && `organization ${names.get(r.organization_id) || r.organization_id}`,
    r.site_id && `site ${names.get(r.site_id) || r.site_id}`,
    r.device_group_id && `group ${names.get(r.device_group_id) || r.device_group_id}`,
  ].filter(Boolean).join(", ");
  const body = h("div");
  const out = h("div");
  const apply = (r, dryRun) => attempt(async () => {
    const answer = await api("POST", t(`/classification-rules/${r.id}/apply`), { body: { dry_run: dryRun } });
    say(dryRun ? `${answer.count} existing device(s) would change.` : `Applied: ${answer.count} device(s) changed.`, dryRun ? "info" : "ok");
    put(out, table(["Device", "External id"], answer.devices.map((d) =>
      h("tr", null, h("td", null, h("a", { href: `#/devices/${d.id}` }, d.name)), h("td", { class: "mono" }, d.external_id || ""))),
    dryRun ? "Would change" : "Changed"));
  });
  const p = pager(async (cursor) => {
    const page = await api("GET", t("/classification-rules"), { query: { limit: 50, cursor } });
    put(body, table(["Pattern", "Assigns", "Priority", "Created", ""], page.items.map((r) =>
      h("tr", null,
        h("td", { class: "mono" }, r.pattern),
        h("td", null, target(r)),
        h("td", { class: "num" }, String(r.priority ?? 0)),
        h("td", null, when(r.created_at)),
        h("td", { class: "actions" },
          h("button", { type: "button", onclick: () => apply(r, true) }, "Preview"),
          h("button", { type: "button", onclick: () => apply(r, false) }, "Apply to existing"),
          h("button", { type: "button", onclick: () => attempt(async () => {
            await api("DELETE", t(`/classification-rules/${r.id}`));
            say("Rule deleted.", "ok");
            await p.reload();
          }) }, "Delete")))), "Classification rules"));
    return page.next_cursor;
  });
  put(root, h("h1", null, "Classification rules"),
    h("p", { class: "hint" }, "Applied by the API to every new device (highest priority first). Create them from the inbox."),
    body, p.el, out);
  await p.reset();
}

// Alerts by state (open, acknowledged, resolved), acknowledged with one click, kept live: an
// alert event over the WebSocket reloads the page shown.

import { api, live, t } from "./api.js";
import { attempt, h, pager, put, say, table, when } from "./dom.js";

const STATES = ["open", "acknowledged", "resolved"];

export async function alerts(root) {
  let state = "open";
  const names = new Map();
  const body = h("div");
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Alert state" });
  const drawTabs = () => put(tabs, STATES.map((s) => h("button", {
    type: "button",
    "aria-pressed": String(s === state),
    onclick: () => { state = s; drawTabs(); p.reset(); },
  }, s[0].toUpperCase() + s.slice(1))));
  const p = pager(async (cursor) => {
    const page = await api("GET", t("/alerts"), { query: { state, limit: 50, cursor } });
    // Names of this page's devices (at most 50 lookups, remembered across pages).
    await Promise.all([...new Set(page.items.map((a) => a.device_id))].filter((d) => !names.has(d)).map(async (d) => {
      const device = await api("GET", t(`/devices/${d}`)).catch(() => null);
      names.set(d, device ? device.name : d);
    }));
    put(body, table(["Device", "Value", "State", "Opened", "Acknowledged", "Resolved", ""], page.items.map((a) =>
      h("tr", { dataset: { alert: a.id } },
        h("td", null, h("a", { href: `#/devices/${a.device_id}` }, names.get(a.device_id) || a.device_id)),
        h("td", { class: "num" }, String(a.value)),
        h("td", null, a.state),
        h("td", null, when(a.opened_at)),
        h("td", null, a.acknowledged_at ? when(a.acknowledged_at) : "—"),
        h("td", null, a.resolved_at ? when(a.resolved_at) : "—"),
        h("td", null, a.state === "open" ? h("button", {
          type: "button",
          onclick: () => attempt(async () => {
            await api("POST", t(`/alerts/${a.id}/ack`));
            say("Alert acknowledged.", "ok");
            await p.reload();
          }),
        }, "Acknowledge") : null))), `${state[0].toUpperCase() + state.slice(1)} alerts`));
    return page.next_cursor;
  });
  const liveState = h("span", { class: "badge" }, "connecting…");
  const stop = live({
    onState: (s) => { liveState.textContent = s; },
    onEvent: (event) => {
      if (event.type !== "alert") return;
      say(`Alert ${event.event}: device ${event.alert.device_id}, value ${event.alert.value}.`);
      p.reload();
    },
  });
  drawTabs();
  put(root, h("h1", null, "Alerts ", liveState), tabs, body, p.el);
  await p.reset();
  return stop;
}

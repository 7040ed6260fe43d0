// The console's entry point: sign-in, the tenant choice for the admin, and the hash router
// (#/inbox, #/devices/<id>, ...) that hands <main> to one view at a time.

import { api, saveSession, session, signOut } from "./api.js";
import { attempt, field, h, pager, put, say, table, when } from "./dom.js";
import { inbox } from "./inbox.js";
import { deviceList, devicePage } from "./devices.js";
import { typeList, typePage } from "./types.js";
import { rules } from "./rules.js";
import { alerts } from "./alerts.js";

const main = document.getElementById("main");
let cleanup = null;

const routes = [
  [/^#\/inbox$/, inbox],
  [/^#\/devices$/, deviceList],
  [/^#\/devices\/([0-9a-f-]{36})$/, devicePage],
  [/^#\/types$/, typeList],
  [/^#\/types\/([0-9a-f-]{36})$/, typePage],
  [/^#\/rules$/, rules],
  [/^#\/alerts$/, alerts],
  [/^#\/tenants$/, tenants],
];

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  say("");
  const s = session();
  if (!s.token) return signIn();
  if (!s.tenant) {
    if (location.hash !== "#/tenants") return void (location.hash = "#/tenants");
  } else if (!location.hash || location.hash === "#/" || location.hash === "#") {
    return void (location.hash = "#/inbox");
  }
  header();
  const found = routes.find(([re]) => re.test(location.hash));
  if (!found) return put(main, h("h1", null, "Not found"), h("p", null, h("a", { href: "#/inbox" }, "Go to the inbox")));
  const [re, view] = found;
  const args = location.hash.match(re).slice(1);
  put(main);
  for (const a of document.querySelectorAll("#nav a")) {
    a.toggleAttribute("aria-current", location.hash.startsWith(a.getAttribute("href")));
  }
  cleanup = (await attempt(() => view(main, ...args))) || null;
  const heading = main.querySelector("h1");
  if (heading && !main.contains(document.activeElement)) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function header() {
  const s = session();
  const nav = document.getElementById("nav");
  nav.hidden = !s.tenant;
  put(document.getElementById("who"),
    s.tenant ? h("span", { class: "tenant", title: s.tenant }, "Tenant: ", s.tenantName || s.tenant) : null,
    s.admin ? h("a", { href: "#/tenants" }, "Switch tenant") : null,
    h("button", { type: "button", onclick: () => { signOut(); location.hash = ""; route(); } }, "Sign out"));
}

function signIn() {
  document.getElementById("nav").hidden = true;
  put(document.getElementById("who"));
  const token = h("input", { type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", { class: "card signin" },
    h("h1", null, "Sign in"),
    h("p", null, "With a tenant's token (gito_…), or the admin token and then a tenant. The token stays in this tab only."),
    field("API token", token),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    attempt(async () => {
      const value = token.value.trim();
      const me = await api("GET", "/whoami", { token: value });
      if (me.admin) {
        saveSession({ token: value, admin: true });
        location.hash = "#/tenants";
      } else {
        const tenant = await api("GET", `/tenants/${me.tenant_id}`, { token: value });
        saveSession({ token: value, admin: false, tenant: me.tenant_id, tenantName: tenant.name });
        location.hash = "#/inbox";
      }
      route();
    });
  });
  put(main, form);
  token.focus();
}

async function tenants(root) {
  const body = h("div");
  const p = pager(async (cursor) => {
    const page = await api("GET", "/tenants", { query: { limit: 50, cursor } });
    put(body, table(["Tenant", "Id", "Created", ""], page.items.map((x) =>
      h("tr", null,
        h("td", null, x.name),
        h("td", { class: "mono" }, x.id),
        h("td", null, when(x.created_at)),
        h("td", null, h("button", {
          type: "button",
          onclick: () => { saveSession({ ...session(), tenant: x.id, tenantName: x.name }); location.hash = "#/inbox"; },
        }, "Open"))))));
    return page.next_cursor;
  });
  put(root, h("h1", null, "Choose a tenant"), body, p.el);
  await p.reset();
}

window.addEventListener("hashchange", route);
window.addEventListener("gito:signed-out", () => {
  signOut();
  say("Signed out: the token is invalid or was revoked.", "error");
  signIn();
});
route();

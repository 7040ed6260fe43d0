// The console and /docs in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core), against a real gito-api, gito-bridge and two Mosquitto brokers started here
// from the built binaries: devices arrive the way they do in a plant, as MQTT messages on the
// external broker that the bridge discovers.
//
// Every browser context blocks every request that does not go to the API (Playwright route
// interception) and counts them: the console and Swagger UI must work with no internet.
//
// Usage: node scripts/console-test/run.mjs [target/debug]
//   GITO_TEST_DATABASE_URL  the PostgreSQL server (a database gito_console_test is made on it)
//   CHROMIUM                the browser (default /usr/bin/chromium)
//   GITO_CONSOLE_SCREENSHOTS=docs  also save the screenshots shown in the README there
// Prints one line per check and ends with `console: N passed, N failed` (read by scripts/test.sh).

import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = resolve(ROOT, process.argv[2] || "target/debug");
const PG = process.env.GITO_TEST_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
const DB = "gito_console_test";
const SHOTS = process.env.GITO_CONSOLE_SCREENSHOTS ? resolve(ROOT, process.env.GITO_CONSOLE_SCREENSHOTS) : null;
const HOSTILE = "<img src=x onerror=alert(1)>";
const work = mkdtempSync(join(tmpdir(), "gito-console-test-"));
const processes = [];
const results = { passed: 0, failed: 0 };

// ---------------------------------------------------------------- services

async function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
    server.on("error", fail);
  });
}

function start(name, command, args, env = {}) {
  const log = join(work, `${name}.log`);
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", openSync(log, "w"), openSync(log, "a")], cwd: ROOT });
  child.log = log;
  child.name = name;
  processes.push(child);
  return child;
}

function stopAll() {
  for (const child of processes.reverse()) if (child.exitCode === null) child.kill("SIGTERM");
}

/** Polls `predicate` until it returns something truthy, for `seconds` at most. */
async function until(what, predicate, seconds = 30) {
  const end = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < end) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: not within ${seconds} s${last ? ` (${last.message})` : ""}`);
}

function psql(sql, url = PG) {
  return execFileSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

async function broker(name) {
  const port = await freePort();
  const conf = join(work, `${name}.conf`);
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n`);
  start(name, "mosquitto", ["-c", conf]);
  return port;
}

// ---------------------------------------------------------------- the API from here

let API;
let ADMIN;

async function rest(method, path, body, token = ADMIN) {
  const response = await fetch(API + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

let EXTERNAL;
function publish(topic, payload) {
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(EXTERNAL), "-q", "1", "-t", topic, "-m", String(payload)]);
}

async function device(tenant, externalId) {
  const page = await rest("GET", `/tenants/${tenant}/devices?external_id=${encodeURIComponent(externalId)}`);
  return page.items[0];
}

// ---------------------------------------------------------------- checks

async function check(name, f) {
  try {
    await f();
    results.passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    results.failed++;
    console.log(`FAIL ${name}: ${(e && e.stack) || e}`);
  }
}

function assert(ok, message) {
  if (!ok) throw new Error(message);
}

// ---------------------------------------------------------------- the run

let browser;
const blocked = [];
const violations = [];

async function context(options = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  await ctx.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(API + "/") || url === API) return route.continue();
    blocked.push(url);
    return route.abort("blockedbyclient");
  });
  ctx.on("page", watch);
  return ctx;
}

function watch(page) {
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  page.on("pageerror", (e) => violations.push(`page error: ${e.message}`));
}

async function signIn(page, token) {
  await page.goto(`${API}/`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function main() {
  console.log(`console-test: work directory ${work}`);
  psql(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  psql(`CREATE DATABASE ${DB}`);
  const local = await broker("local-broker");
  EXTERNAL = await broker("external-broker");
  const apiPort = await freePort();
  API = `http://127.0.0.1:${apiPort}`;
  ADMIN = `admin-${randomBytes(16).toString("hex")}`;
  const api = start("gito-api", join(BIN, "gito-api"), ["serve"], {
    DATABASE_URL: PG.replace(/\/[^/]*$/, `/${DB}`),
    GITO_ADMIN_TOKEN: ADMIN,
    GITO_API_ADDR: `127.0.0.1:${apiPort}`,
    GITO_MQTT_URL: `mqtt://127.0.0.1:${local}`,
    RUST_LOG: "info",
  });
  await until("gito-api ready", async () => {
    if (api.exitCode !== null) throw new Error(`gito-api exited: ${readFileSync(api.log, "utf8").slice(-2000)}`);
    return (await fetch(`${API}/ready`)).ok;
  }, 120);
  const tenant = (await rest("POST", "/tenants", { name: "Plant <b>North</b>" })).id;
  const bridgeToken = (await rest("POST", `/tenants/${tenant}/tokens`, { name: "bridge" })).token;
  const tenantToken = (await rest("POST", `/tenants/${tenant}/tokens`, { name: "operator" })).token;
  const bridge = start("gito-bridge", join(BIN, "gito-bridge"), [], {
    GITO_EXTERNAL_MQTT_URL: `mqtt://127.0.0.1:${EXTERNAL}`,
    GITO_LOCAL_MQTT_URL: `mqtt://127.0.0.1:${local}`,
    GITO_API_URL: API,
    GITO_API_TOKEN: bridgeToken,
    GITO_TENANT_ID: tenant,
    GITO_BRIDGE_SPOOL_DIR: join(work, "spool"),
    RUST_LOG: "info",
  });
  await until("gito-bridge subscribed", () => {
    if (bridge.exitCode !== null) throw new Error(`gito-bridge exited: ${readFileSync(bridge.log, "utf8").slice(-2000)}`);
    return /subscribed|connected/i.test(readFileSync(bridge.log, "utf8"));
  }, 60);

  // What a plant sends: three boilers (temp, pressure) and two meters (kwh).
  let n = 0;
  const value = () => (20 + (n++ % 50) + n / 1000).toFixed(3);
  const boilers = ["SDE11/B1/UTILITIES/BOILER/T1", "SDE11/B2/UTILITIES/BOILER/T2", "SDE11/B3/UTILITIES/BOILER/T3"];
  const meters = ["SDE11/B1/ELEC/METER/M1", "SDE11/B2/ELEC/METER/M2"];
  const sendAll = () => {
    for (const b of boilers) { publish(`${b}/temp`, value()); publish(`${b}/pressure`, value()); }
    for (const m of meters) publish(`${m}/kwh`, value());
  };
  // Retried: the bridge may still be connecting to the external broker.
  await until("the bridge discovered the five devices", async () => {
    sendAll();
    const page = await rest("GET", `/tenants/${tenant}/devices?limit=100`);
    return page.items.length >= 5;
  }, 60);

  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  const ctx = await context();
  const page = await ctx.newPage();
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });

  await check("console and docs answer with a strict CSP, nosniff and frame-ancestors 'none'", async () => {
    for (const path of ["/console/", "/console/js/app.js", "/docs", "/docs/swagger-ui-bundle.js"]) {
      const r = await fetch(API + path);
      assert(r.ok, `${path}: ${r.status}`);
      const csp = r.headers.get("content-security-policy") || "";
      for (const part of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
        assert(csp.includes(part), `${path}: CSP ${csp} lacks ${part}`);
      }
      assert(!/unsafe-inline|unsafe-eval/.test(csp), `${path}: ${csp}`);
      assert(r.headers.get("x-content-type-options") === "nosniff", `${path}: nosniff`);
    }
    const root = await fetch(`${API}/`, { redirect: "manual" });
    assert(root.status >= 300 && root.status < 400 && root.headers.get("location") === "/console/", `/ answers ${root.status} ${root.headers.get("location")}`);
  });

  await check("/docs renders Swagger UI from the binary with everything but the API blocked", async () => {
    const docs = await ctx.newPage();
    await docs.goto(`${API}/docs`);
    await docs.getByRole("heading", { name: /gito API/ }).first().waitFor({ timeout: 20000 });
    await docs.locator(".opblock").first().waitFor();
    assert((await docs.locator(".opblock").count()) > 40, "operations listed");
    // A token given to "Authorize" is used for "Try it out" and forgotten with the page.
    await docs.locator(".scheme-container button.authorize").click();
    const modal = docs.locator(".modal-ux");
    await modal.locator("input").first().fill(ADMIN);
    await modal.locator("button.auth.authorize").click();
    await modal.locator("button", { hasText: "Logout" }).waitFor();
    assert(
      (await docs.evaluate(() => localStorage.length)) === 0,
      "the token given to Swagger UI stays out of localStorage",
    );
    await docs.close();
  });

  await check("sign in with the admin token, then pick the tenant (its hostile name shown as text)", async () => {
    await signIn(page, ADMIN);
    await page.getByRole("heading", { name: "Choose a tenant" }).waitFor();
    const row = page.getByRole("row").filter({ hasText: "Plant <b>North</b>" });
    await row.getByRole("button", { name: "Open" }).click();
    await page.getByRole("heading", { name: "Inbox" }).waitFor();
    await page.getByText("Tenant: Plant <b>North</b>").waitFor();
    assert(await page.evaluate(() => sessionStorage.getItem("gito.session").includes("admin")), "token in sessionStorage");
    assert(!page.url().includes(ADMIN), "no token in the URL");
  });

  await check("the inbox shows the devices the bridge discovered, grouped by topic shape", async () => {
    const group = page.getByRole("row").filter({ hasText: "BOILER" }).filter({ hasText: "temp" });
    await group.first().waitFor();
    assert((await group.count()) === 1, "one boiler group");
    const text = await group.innerText();
    assert(/\b3\b/.test(text) && text.includes("pressure"), `boiler group: ${text}`);
    await page.getByRole("row").filter({ hasText: "METER" }).first().waitFor();
    for (const b of boilers) await page.getByRole("cell", { name: b, exact: true }).first().waitFor();
    if (SHOTS) await page.screenshot({ path: join(SHOTS, "console-inbox.png"), fullPage: true });
  });

  const boilerType = await rest("POST", `/tenants/${tenant}/device-types`, { name: "Boiler", telemetry_schema: { temp: { unit: "°C", min: 0, max: 100 } } });
  const meterType = await rest("POST", `/tenants/${tenant}/device-types`, { name: "Meter" });

  await check("classify a group by pattern in one action, and the REST API agrees", async () => {
    await page.reload();
    await page.getByRole("heading", { name: "Inbox" }).waitFor();
    const group = page.getByRole("row").filter({ hasText: "BOILER" }).filter({ hasText: "temp" });
    await group.getByRole("button", { name: /^Select / }).click();
    await page.getByLabel("Device type").selectOption({ label: "Boiler" });
    await page.getByRole("button", { name: "Preview" }).click();
    await page.getByText("Preview: 3 device(s) would change").first().waitFor();
    const before = await rest("GET", `/tenants/${tenant}/devices?device_type_id=${boilerType.id}`);
    assert(before.items.length === 0, "the preview changed nothing");
    await page.getByRole("button", { name: "Assign", exact: true }).click();
    await page.getByText("Assigned 3 device(s)").first().waitFor();
    const after = await rest("GET", `/tenants/${tenant}/devices?device_type_id=${boilerType.id}`);
    assert(after.items.length === 3 && after.items.every((d) => boilers.includes(d.external_id)), `typed: ${JSON.stringify(after.items.map((d) => d.external_id))}`);
    const left = await rest("GET", `/tenants/${tenant}/devices?unassigned=true`);
    assert(left.items.every((d) => !boilers.includes(d.external_id)), "the boilers left the inbox");
  });

  await check("a rule saved from the inbox classifies the next new device on arrival", async () => {
    await page.getByLabel(/^Topic pattern/).fill("SDE11/+/ELEC/METER/+");
    await page.getByLabel("Device type").selectOption({ label: "Meter" });
    await page.getByRole("button", { name: "Save as rule" }).click();
    await page.getByText(/Rule saved/).waitFor();
    const rules = await rest("GET", `/tenants/${tenant}/classification-rules`);
    assert(rules.items.some((r) => r.pattern === "SDE11/+/ELEC/METER/+" && r.device_type_id === meterType.id), "rule stored");
    const fresh = "SDE11/B9/ELEC/METER/M9";
    const arrived = await until("the new meter is discovered", async () => {
      publish(`${fresh}/kwh`, value());
      return device(tenant, fresh);
    }, 30);
    assert(arrived.device_type_id === meterType.id, `arrived with type ${arrived.device_type_id}`);
  });

  await check("the device type page lists discovered metrics, and one click adopts one", async () => {
    await page.goto(`${API}/console/#/types/${boilerType.id}`);
    await page.getByRole("heading", { name: "Boiler" }).waitFor();
    const adopt = page.getByRole("button", { name: "Adopt pressure" });
    await adopt.waitFor({ timeout: 15000 });
    if (SHOTS) await page.screenshot({ path: join(SHOTS, "console-device-type.png"), fullPage: true });
    await adopt.click();
    await page.getByText("pressure added to the schema.").waitFor();
    const type = await rest("GET", `/tenants/${tenant}/device-types/${boilerType.id}`);
    assert(type.telemetry_schema && "pressure" in type.telemetry_schema && type.telemetry_schema.temp.max === 100, JSON.stringify(type.telemetry_schema));
    await page.getByRole("button", { name: "Adopt pressure" }).waitFor({ state: "detached" });
  });

  const b1 = await device(tenant, boilers[0]);
  await check("a live value appears on the device page after an MQTT publish, a flagged one marked", async () => {
    // A quarter of an hour of history (the payload's own ts), two values over the type's max.
    const now = Date.now();
    for (let i = 40; i >= 1; i--) {
      const v = i === 12 || i === 30 ? 104 + i / 10 : 60 + 20 * Math.sin(i / 5) + (i % 3);
      publish(`${boilers[0]}/temp`, JSON.stringify({ temp: Number(v.toFixed(2)), ts: new Date(now - i * 20000).toISOString() }));
    }
    await until("the history is stored", async () =>
      (await rest("GET", `/tenants/${tenant}/devices/${b1.id}/telemetry?metric=temp&limit=100`)).items.length >= 40);
    await page.goto(`${API}/console/#/devices/${b1.id}`);
    await page.getByRole("heading", { name: boilers[0] }).waitFor();
    await page.getByText("live", { exact: true }).waitFor({ timeout: 15000 });
    await page.getByLabel("Metric").selectOption("temp");
    publish(`${boilers[0]}/temp`, "77.125");
    await page.getByRole("cell", { name: "77.125" }).waitFor({ timeout: 15000 });
    publish(`${boilers[0]}/temp`, "150.5");
    const row = page.locator("tr.flagged", { hasText: "150.5" });
    await row.waitFor({ timeout: 15000 });
    assert((await row.innerText()).includes("flagged"), "flagged value marked");
    await page.locator("svg.chart circle.flagged").first().waitFor();
    await page.getByLabel("Resolution").selectOption({ label: "Buckets of 1m" });
    await page.locator("svg.chart polyline.line").waitFor();
    if (SHOTS) {
      await page.getByLabel("Resolution").selectOption({ label: "Raw points" });
      await page.getByLabel("Range").selectOption({ label: "15m" });
      await page.locator("svg.chart circle.flagged").first().waitFor();
      await page.screenshot({ path: join(SHOTS, "console-device.png"), fullPage: true });
    }
  });

  await check("an alert appears live and is acknowledged", async () => {
    await rest("POST", `/tenants/${tenant}/alert-rules`, { name: "Too hot", metric: "temp", operator: ">", threshold: 500, device_type_id: boilerType.id });
    await page.goto(`${API}/console/#/alerts`);
    await page.getByRole("heading", { name: /Alerts/ }).waitFor();
    await page.getByText("live", { exact: true }).waitFor({ timeout: 15000 });
    publish(`${boilers[1]}/temp`, "612.5");
    const ack = page.getByRole("button", { name: "Acknowledge", exact: true });
    await ack.first().waitFor({ timeout: 20000 });
    await ack.first().click();
    await page.getByText("Alert acknowledged.").waitFor();
    const acked = await rest("GET", `/tenants/${tenant}/alerts?state=acknowledged`);
    assert(acked.items.length === 1 && acked.items[0].value === 612.5, JSON.stringify(acked.items));
    await page.getByRole("button", { name: "Acknowledged" }).click();
    await page.getByRole("cell", { name: "612.5" }).waitFor();
    await page.getByRole("link", { name: boilers[1] }).waitFor();
  });

  await check("hostile device names and topics are shown as text, no script runs", async () => {
    const hostile = await rest("POST", `/tenants/${tenant}/devices`, { name: HOSTILE, external_id: `evil/<script>alert(2)</script>/x` });
    await page.goto(`${API}/console/#/devices`);
    await page.getByRole("link", { name: HOSTILE }).waitFor();
    await page.getByRole("cell", { name: "evil/<script>alert(2)</script>/x" }).waitFor();
    await page.goto(`${API}/console/#/devices/${hostile.id}`);
    await page.getByRole("heading", { name: HOSTILE }).waitFor();
    await page.goto(`${API}/console/#/inbox`);
    await page.getByRole("cell", { name: "evil/<script>alert(2)</script>/x" }).first().waitFor();
    assert((await page.locator("main img").count()) === 0, "no img element was created");
    assert(dialogs.length === 0, `dialogs: ${dialogs}`);
  });

  await check("a tenant token signs in alone; another tenant's data stays out of reach", async () => {
    const other = await context();
    const p = await other.newPage();
    watch(p);
    await signIn(p, tenantToken);
    await p.getByRole("heading", { name: "Inbox" }).waitFor();
    await p.getByText("Tenant: Plant <b>North</b>").waitFor();
    const elsewhere = (await rest("POST", "/tenants", { name: "Elsewhere" })).id;
    await p.goto(`${API}/console/#/tenants`);
    await p.getByText(/only the admin token/).waitFor();
    const status = await p.evaluate(async (t) => (await fetch(`/tenants/${t}/devices`, { headers: { Authorization: `Bearer ${JSON.parse(sessionStorage.getItem("gito.session")).token}` } })).status, elsewhere);
    assert(status === 404, `another tenant's devices: ${status}`);
    await p.getByRole("button", { name: "Sign out" }).click();
    await p.getByLabel("API token").waitFor();
    assert(await p.evaluate(() => sessionStorage.getItem("gito.session") === null), "signed out");
    await other.close();
  });

  await check("keyboard: sign-in, navigation and the inbox's controls are reachable with Tab and labelled", async () => {
    const other = await context();
    const p = await other.newPage();
    await p.goto(`${API}/console/`);
    await p.getByLabel("API token").waitFor();
    assert(await p.evaluate(() => document.activeElement && document.activeElement.type === "password"), "the token field has focus");
    await p.keyboard.type(ADMIN);
    await p.keyboard.press("Enter");
    await p.getByRole("heading", { name: "Choose a tenant" }).waitFor();
    await p.evaluate((t) => { const s = JSON.parse(sessionStorage.getItem("gito.session")); s.tenant = t; sessionStorage.setItem("gito.session", JSON.stringify(s)); location.hash = "#/inbox"; }, tenant);
    await p.getByRole("heading", { name: "Inbox" }).waitFor();
    const unlabelled = await p.evaluate(() => [...document.querySelectorAll("input, select")].filter((e) => !e.labels?.length && !e.getAttribute("aria-label")).length);
    assert(unlabelled === 0, `${unlabelled} unlabelled inputs`);
    const seen = new Set();
    for (let i = 0; i < 40; i++) {
      await p.keyboard.press("Tab");
      seen.add(await p.evaluate(() => document.activeElement.textContent.trim() || document.activeElement.id));
    }
    for (const want of ["Inbox", "Devices", "Alerts", "Sign out", "Filter"]) assert(seen.has(want), `Tab reaches ${want}: ${[...seen]}`);
    await other.close();
  });

  await check("readable on a phone: no horizontal scrolling of the page at 390 px", async () => {
    const phone = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const p = await phone.newPage();
    await signIn(p, tenantToken);
    for (const hash of ["#/inbox", `#/devices/${b1.id}`, `#/types/${boilerType.id}`, "#/alerts"]) {
      await p.goto(`${API}/console/${hash}`);
      await p.locator("main h1").waitFor();
      await p.waitForLoadState("networkidle");
      const wide = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(wide <= 1, `${hash}: the page is ${wide} px wider than the screen`);
    }
    await phone.close();
  });

  await check("no request left for the internet, no CSP violation, no script error", async () => {
    assert(blocked.length === 0, `blocked: ${blocked.join(", ")}`);
    assert(violations.length === 0, violations.join("\n"));
  });
}

try {
  await main();
} catch (e) {
  results.failed++;
  console.log(`FAIL setup: ${(e && e.stack) || e}`);
  for (const child of processes) {
    try {
      console.log(`--- ${child.name} (last lines)\n${readFileSync(child.log, "utf8").split("\n").slice(-25).join("\n")}`);
    } catch {}
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  stopAll();
  try { psql(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`); } catch {}
  // The services' logs are kept for a look when something failed.
  if (results.failed === 0) rmSync(work, { recursive: true, force: true });
  else console.log(`console-test: logs kept in ${work}`);
}
console.log(`console: ${results.passed} passed, ${results.failed} failed`);
process.exit(results.failed ? 1 : 0);

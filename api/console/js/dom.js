// Building the page from data without ever parsing data as HTML: every string lands in a text
// node or an attribute value (device names and topics come from outside the plant's control).

/** An element: h("button", { type: "button", onclick }, "Save"). */
export function h(tag, props, ...children) {
  return fill(document.createElement(tag), props, children);
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element, same arguments as h(). */
export function s(tag, props, ...children) {
  return fill(document.createElementNS(SVG, tag), props, children);
}

function fill(el, props, children) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" || key === "checked" || key === "selected") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces everything inside el. */
export function put(el, ...children) {
  el.replaceChildren();
  return fill(el, null, children);
}

let ids = 0;
/** A labelled form field: [label, input]. */
export function field(label, input) {
  if (!input.id) input.id = `f${++ids}`;
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

/** A <select> of items, with an empty first choice. */
export function select(items, { empty = "—", value = "", label = (i) => i.name } = {}) {
  return h("select", null,
    h("option", { value: "" }, empty),
    items.map((i) => h("option", { value: i.id, selected: i.id === value }, label(i))));
}

export function table(headers, rows, caption) {
  return h("div", { class: "scroll" },
    h("table", null,
      caption ? h("caption", null, caption) : null,
      h("thead", null, h("tr", null, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: headers.length, class: "empty" }, "Nothing here.")))));
}

export function when(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, d.toLocaleString());
}

/** Says something in the status line (read out by screen readers). */
export function say(text, kind = "info") {
  const el = document.getElementById("status");
  el.className = `status ${kind}`;
  el.textContent = text;
}

/** Runs f, showing its error in the status line instead of losing it. */
export async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    say(e.message || String(e), "error");
    return undefined;
  }
}

/**
 * Previous/next over a keyset-paged list. `load(cursor)` draws one page and resolves to its
 * `next_cursor`. Returns { el, reset(), reload() }.
 */
export function pager(load) {
  const before = [];
  let current = null;
  let next = null;
  const info = h("span", { class: "pageinfo" });
  const go = async () => {
    next = (await attempt(() => load(current))) ?? null;
    prev.disabled = before.length === 0;
    forward.disabled = !next;
    info.textContent = `Page ${before.length + 1}`;
  };
  const prev = h("button", { type: "button", disabled: true, onclick: () => { current = before.pop() ?? null; go(); } }, "Previous page");
  const forward = h("button", { type: "button", disabled: true, onclick: () => { before.push(current); current = next; go(); } }, "Next page");
  return {
    el: h("div", { class: "pager" }, prev, info, forward),
    reset: () => { before.length = 0; current = null; return go(); },
    reload: go,
  };
}

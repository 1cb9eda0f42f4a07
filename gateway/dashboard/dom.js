// Building the page from data: every string becomes a text node or an attribute value, never
// markup, so whatever the API answers (event names, payloads, error texts) is shown, not run.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const item of child) append(parent, item);
  } else if (child instanceof Node) {
    parent.appendChild(child);
  } else {
    parent.appendChild(document.createTextNode(String(child)));
  }
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

/** An HTML element: h("a", {href: "#/x"}, "text", child, [more]). */
export function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

/** An SVG element, built the same way. */
export function s(tag, attributes, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A link inside the dashboard: the path's parts are URI-encoded one by one. */
export function route(...parts) {
  return "#/" + parts.map((part) => encodeURIComponent(String(part))).join("/");
}

export function routeWithQuery(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

const NUMBER = new Intl.NumberFormat("en");

export function number(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  return digits ? value.toFixed(digits) : NUMBER.format(value);
}

export function milliseconds(value) {
  if (value === undefined || value === null) return "–";
  if (value === 0) return "0 ms";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  return `${value >= 100 ? Math.round(value) : value.toFixed(1)} ms`;
}

export function seconds(value) {
  if (value === undefined || value === null) return "–";
  if (value === 0) return "0 s";
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 120) return `${Math.round(value)} s`;
  if (value < 7200) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

/** A rate or any small figure: 0.05, 1.25, 12, 1,200 (no trailing zeros). */
export function decimal(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  return value >= 100 ? NUMBER.format(Math.round(value)) : String(Number(value.toFixed(2)));
}

/** "2024-12-10 10:00:03 UTC" inside a <time>, the full value as its tooltip. */
export function time(value) {
  if (!value) return h("span", { class: "muted" }, "–");
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return h("span", {}, value);
  const text = date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  return h("time", { datetime: value, title: value }, text);
}

/** A clock time "10:00" (UTC) for chart axes. */
export function clock(value) {
  return new Date(value).toISOString().slice(11, 16);
}

/** A coloured word for a status or outcome; the word itself carries the meaning. */
export function badge(value) {
  const text = value || "–";
  return h("span", { class: `badge badge-${String(text).replace(/[^a-z_]/g, "")}` }, text);
}

/**
 * A table: columns [{title, cell: (row) => node|string, numeric?}], rows of data.
 * `caption` names it for screen readers; `empty` says what an empty table means.
 */
export function table({ caption, columns, rows, empty, rowKey }) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.title))));
  const body = h("tbody", {});
  for (const row of rows) body.appendChild(tableRow(columns, row, rowKey));
  const node = h("table", {}, caption ? h("caption", {}, caption) : null, head, body);
  if (!rows.length && empty) {
    return h("div", {}, node, h("p", { class: "empty" }, empty));
  }
  return h("div", { class: "table-wrap" }, node);
}

export function tableRow(columns, row, rowKey) {
  const tr = h("tr", rowKey ? { dataset: { key: rowKey(row) } } : {});
  for (const column of columns) tr.appendChild(h("td", { class: column.numeric ? "num" : null }, column.cell(row)));
  return tr;
}

/** A definition list from [term, value] pairs (pairs whose value is undefined are left out). */
export function facts(pairs) {
  const list = h("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === undefined) continue;
    list.appendChild(h("div", {}, h("dt", {}, term), h("dd", {}, value === "" || value === null ? "–" : value)));
  }
  return list;
}

/** JSON shown as text (never parsed as markup). */
export function json(value) {
  return h("pre", { class: "json", tabindex: "0" }, JSON.stringify(value, null, 2));
}

/** A labelled form field. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintNode = hint ? h("small", { id: `${id}-hint`, class: "hint" }, hint) : null;
  if (hintNode) control.setAttribute("aria-describedby", hintNode.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintNode);
}

export function select(name, value, options) {
  return h(
    "select",
    { name },
    options.map(([optionValue, text]) => h("option", { value: optionValue, selected: optionValue === value }, text)),
  );
}

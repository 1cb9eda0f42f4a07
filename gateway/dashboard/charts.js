// Small inline-SVG charts. Each is a <figure> whose SVG has a title and a one-line summary for
// screen readers, and whose figures are also in a table under "Show the numbers".

import { clock, h, s } from "./dom.js";

const WIDTH = 640;
const HEIGHT = 200;
const MARGIN = { top: 12, right: 14, bottom: 26, left: 58 };
let chartCount = 0;

/**
 * An axis from 0 that holds `max` in at most `ticks` round steps (1, 2 or 5 × 10^n; whole
 * numbers only for counts), so its labels read well: {top, step}.
 */
function niceScale(max, { ticks = 4, integer = false } = {}) {
  if (!(max > 0)) return { top: integer ? 4 : 1, step: integer ? 1 : 0.25 };
  const rough = max / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= rough * (1 - 1e-9));
  if (integer) step = Math.max(1, Math.round(step));
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

/** The chart's figures as a table, built when first opened (a chart costs less to draw). */
function numbersTable(caption, headers, rows) {
  const details = h("details", { class: "numbers" }, h("summary", {}, "Show the numbers"));
  details.addEventListener("toggle", function build() {
    if (!details.open) return;
    details.removeEventListener("toggle", build);
    details.appendChild(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          {},
          h("caption", {}, caption),
          h("thead", {}, h("tr", {}, headers.map((title, i) => h("th", { scope: "col", class: i ? "num" : null }, title)))),
          h("tbody", {}, rows().map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { class: i ? "num" : null }, cell))))),
        ),
      ),
    );
  });
  return details;
}

function frame(label, summary) {
  const id = `chart-${++chartCount}`;
  return s(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-labelledby": `${id}-title ${id}-desc`,
      class: "chart",
      preserveAspectRatio: "xMidYMid meet",
    },
    s("title", { id: `${id}-title` }, label),
    s("desc", { id: `${id}-desc` }, summary),
  );
}

/**
 * A line chart over time. series: [{name, values: [number|null per point]}]; times: the
 * points' ISO timestamps. A null value leaves a gap (no data there).
 */
export function lineChart({ label, times, series, format, empty, integer = false }) {
  const values = series.flatMap((line) => line.values).filter((v) => v !== null && v !== undefined);
  const figure = h("figure", { class: "chart-figure" }, h("figcaption", {}, label));
  if (!times.length || !values.length) {
    figure.appendChild(h("p", { class: "empty" }, empty || "No data in this window."));
    return figure;
  }
  const { top, step } = niceScale(Math.max(...values), { integer });
  const innerWidth = WIDTH - MARGIN.left - MARGIN.right;
  const innerHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (i) => MARGIN.left + (times.length === 1 ? innerWidth / 2 : (i / (times.length - 1)) * innerWidth);
  const y = (v) => MARGIN.top + innerHeight - (v / top) * innerHeight;
  const latest = series.map((line) => `${line.name} ${format(lastValue(line.values))}`).join(", ");
  const peak = series.map((line) => `${line.name} peak ${format(Math.max(0, ...line.values.filter((v) => v != null)))}`).join(", ");
  const svg = frame(label, `Latest: ${latest}. ${peak}.`);

  const grid = s("g", { class: "grid", "aria-hidden": "true" });
  for (let k = 0; k <= Math.round(top / step); k++) {
    const value = step * k;
    grid.appendChild(s("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value) }));
    grid.appendChild(s("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  }
  const ticks = Math.min(6, times.length);
  for (let k = 0; k < ticks; k++) {
    const i = ticks === 1 ? 0 : Math.round((k * (times.length - 1)) / (ticks - 1));
    const anchor = ticks > 1 && k === 0 ? "start" : ticks > 1 && k === ticks - 1 ? "end" : "middle";
    grid.appendChild(s("text", { x: x(i), y: HEIGHT - 8, "text-anchor": anchor }, clock(times[i])));
  }
  svg.appendChild(grid);

  series.forEach((line, index) => {
    let d = "";
    let drawing = false;
    const dots = s("g", { class: `series series-${index}`, "aria-hidden": "true" });
    line.values.forEach((value, i) => {
      if (value === null || value === undefined) {
        drawing = false;
        return;
      }
      d += `${drawing ? "L" : "M"}${x(i).toFixed(1)},${y(value).toFixed(1)}`;
      const previous = line.values[i - 1];
      const next = line.values[i + 1];
      if ((previous === null || previous === undefined) && (next === null || next === undefined)) {
        dots.appendChild(s("circle", { cx: x(i), cy: y(value), r: 2.5 }));
      }
      drawing = true;
    });
    dots.insertBefore(s("path", { d }), dots.firstChild);
    svg.appendChild(dots);
  });

  figure.appendChild(svg);
  figure.appendChild(
    h(
      "ul",
      { class: "legend" },
      series.map((line, index) => h("li", {}, h("span", { class: `swatch series-${index}`, "aria-hidden": "true" }), line.name)),
    ),
  );
  figure.appendChild(
    numbersTable(
      label,
      ["Time (UTC)", ...series.map((line) => line.name)],
      () => times.map((at, i) => [clock(at), ...series.map((line) => format(line.values[i]))]),
    ),
  );
  return figure;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

/** Horizontal bars: items [{label, value, tone}] (tone: a CSS class suffix for the colour). */
export function barChart({ label, items, format, empty }) {
  const figure = h("figure", { class: "chart-figure" }, h("figcaption", {}, label));
  if (!items.length) {
    figure.appendChild(h("p", { class: "empty" }, empty || "Nothing in this window."));
    return figure;
  }
  const rowHeight = 26;
  const height = items.length * rowHeight + 8;
  const labelWidth = 190;
  const valueWidth = 70;
  const top = Math.max(...items.map((item) => item.value), 1);
  const id = `chart-${++chartCount}`;
  const svg = s(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`, class: "chart bars" },
    s("title", { id: `${id}-title` }, label),
    s("desc", { id: `${id}-desc` }, items.map((item) => `${item.label}: ${format(item.value)}`).join(", ")),
  );
  items.forEach((item, i) => {
    const y = 4 + i * rowHeight;
    const width = ((WIDTH - labelWidth - valueWidth) * item.value) / top;
    svg.appendChild(
      s(
        "g",
        { class: `bar tone-${item.tone || "default"}`, "aria-hidden": "true" },
        s("text", { x: labelWidth - 8, y: y + 16, "text-anchor": "end", class: "bar-label" }, item.label),
        s("rect", { x: labelWidth, y: y + 3, width: Math.max(item.value ? 2 : 0, width), height: rowHeight - 8, rx: 3 }),
        s("text", { x: labelWidth + width + 6, y: y + 16, class: "bar-value" }, format(item.value)),
      ),
    );
  });
  figure.appendChild(svg);
  figure.appendChild(numbersTable(label, ["", "Count"], () => items.map((item) => [item.label, format(item.value)])));
  return figure;
}

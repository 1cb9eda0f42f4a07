// Event catalog: the list filtered by name, source and PII (GET /api/v1/catalog/events), and an
// event's page (GET /api/v1/catalog/events/{name}): latency, PII flags with confirm / dismiss
// (POST …/pii), schema hints with drift, and redacted examples.

import { api } from "./api.js";
import { badge, facts, field, fill, h, json, milliseconds, number, route, select, table, time } from "./dom.js";
import { announce, errorBox, filterForm, heading, loadInto, pager, panel } from "./views.js";

const WINDOWS = [
  ["PT1H", "Last hour"],
  ["PT24H", "Last 24 hours"],
  ["P7D", "Last 7 days"],
];

function sources(list) {
  return (list || []).map((source) => `${source.type} (${number(source.count)})`).join(", ") || "–";
}

export function catalogList(context) {
  const query = {};
  for (const name of ["name", "source", "pii", "cursor"]) if (context.query[name]) query[name] = context.query[name];
  const form = filterForm("/catalog", "Filter the event catalog", [
    field("Name", h("input", { name: "name", value: query.name || "", spellcheck: "false" }), "A prefix (order.) or a pattern (*pay*)"),
    field("Source", h("input", { name: "source", value: query.source || "", spellcheck: "false" }), "A source type, e.g. web_signup"),
    field(
      "PII",
      select("pii", query.pii || "", [
        ["", "Any"],
        ["true", "Flagged as likely PII"],
        ["false", "Not flagged"],
      ]),
    ),
  ]);
  const results = panel(null, async () => {
    const answer = await api("/api/v1/catalog/events", { query: { ...query, limit: 50 }, signal: context.signal });
    return [
      table({
        caption: "Event names, in order",
        columns: [
          { title: "Event", cell: (e) => h("a", { href: route("catalog", e.name) }, e.name) },
          { title: "Count", numeric: true, cell: (e) => number(e.count) },
          { title: "Sources", cell: (e) => sources(e.sources) },
          { title: "PII paths", numeric: true, cell: (e) => (e.pii_paths ? h("span", { class: "badge badge-pii" }, `${e.pii_paths} PII`) : "0") },
          { title: "Drift", cell: (e) => (e.drift ? badge("drift") : "–") },
          { title: "Last seen", cell: (e) => time(e.last_seen) },
        ],
        rows: answer.events || [],
        empty: "No event name matches these filters.",
      }),
      pager("/catalog", query, answer.next_cursor),
    ];
  });
  return h("div", { class: "view" }, heading("Event catalog"), form, results);
}

function latencyNodes(event) {
  const latency = event.latency;
  if (!latency) return h("p", { class: "empty" }, `No trigger of this event was accepted in the window (${event.latency_window || "PT1H"}).`);
  const row = (label, figures) => ({ label, figures: figures || {} });
  return [
    facts([
      ["Triggers", number(latency.count)],
      ["Matched", number(latency.matched)],
      ["First step done", number(latency.first_step_done)],
    ]),
    table({
      caption: `Processing latency over ${event.latency_window || "the window"}`,
      columns: [
        { title: "From acceptance to", cell: (r) => r.label },
        { title: "Average", numeric: true, cell: (r) => milliseconds(r.figures.avg_ms) },
        { title: "p50", numeric: true, cell: (r) => milliseconds(r.figures.p50_ms) },
        { title: "p95", numeric: true, cell: (r) => milliseconds(r.figures.p95_ms) },
        { title: "p99", numeric: true, cell: (r) => milliseconds(r.figures.p99_ms) },
        { title: "Max", numeric: true, cell: (r) => milliseconds(r.figures.max_ms) },
      ],
      rows: [row("matched", latency.accepted_to_matched), row("first step done", latency.accepted_to_first_step)],
    }),
  ];
}

export function catalogEvent(context) {
  const [name] = context.params;
  const window_ = WINDOWS.some(([value]) => value === context.query.window) ? context.query.window : "PT1H";
  const path = `/api/v1/catalog/events/${encodeURIComponent(name)}`;
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const view = h("div", { class: "view" }, h("p", { class: "crumbs" }, h("a", { href: "#/catalog" }, "Event catalog"), " / ", name), heading(name), body);

  const review = async (flagPath, action, button) => {
    button.disabled = true;
    try {
      const event = await api(`${path}/pii`, { method: "POST", body: { path: flagPath, action }, signal: context.signal });
      show(event);
      const done = action === "dismiss" ? "dismissed" : "confirmed";
      announce(`The flag on ${flagPath} is ${done}.`);
      const row = body.querySelector(`tr[data-key="${CSS.escape(flagPath)}"]`);
      row?.querySelector("button:not([disabled])")?.focus();
    } catch (error) {
      button.disabled = false;
      if (error.name === "AbortError") return;
      const slot = body.querySelector(".review-status");
      if (slot) fill(slot, errorBox(error));
    }
  };

  const reviewButtons = (flag) =>
    h(
      "div",
      { class: "row-actions" },
      h(
        "button",
        {
          type: "button",
          class: "small",
          disabled: flag.status === "confirmed",
          "aria-label": `Confirm ${flag.path} as PII`,
          onclick: (e) => review(flag.path, "confirm", e.currentTarget),
        },
        "Confirm",
      ),
      h(
        "button",
        {
          type: "button",
          class: "small secondary",
          disabled: flag.status === "dismissed",
          "aria-label": `Dismiss the flag on ${flag.path}`,
          onclick: (e) => review(flag.path, "dismiss", e.currentTarget),
        },
        "Dismiss",
      ),
    );

  const windowForm = h(
    "form",
    { class: "inline-form" },
    field("Latency over", select("window", window_, WINDOWS)),
    h("button", { type: "submit", class: "secondary" }, "Show"),
  );
  windowForm.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `${route("catalog", name)}?window=${encodeURIComponent(new FormData(windowForm).get("window"))}`;
  });

  function show(event) {
    const flagged = new Map((event.pii || []).map((flag) => [flag.path, flag]));
    body.removeAttribute("aria-busy");
    fill(
      body,
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Summary"),
        facts([
          ["Count", number(event.count)],
          ["First seen", time(event.first_seen)],
          ["Last seen", time(event.last_seen)],
          ["Sources", sources(event.sources)],
          ["PII paths", number(event.pii_paths || 0)],
          ["Schema drift", event.drift ? badge("drift") : "none"],
          ["Truncated", event.truncated ? "yes: payloads had more paths or depth than catalogued" : undefined],
          ["Triggers", h("a", { href: `#/triggers?event_name=${encodeURIComponent(event.name)}` }, "Triggers of this event")],
        ]),
      ),
      h("section", { class: "panel" }, h("h2", {}, "Latency"), windowForm, latencyNodes(event)),
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "PII flags"),
        h("p", { class: "lede" }, "Confirm a flag to always redact the path; dismiss it when the path holds no personal data."),
        h("div", { class: "review-status" }),
        table({
          caption: "Paths flagged as likely personal data",
          columns: [
            { title: "Path", cell: (f) => h("code", {}, f.path) },
            { title: "Kinds", cell: (f) => (f.kinds || []).join(", ") || "–" },
            { title: "Status", cell: (f) => badge(f.status) },
            { title: "Reviewed", cell: (f) => time(f.reviewed_at) },
            { title: "Review", cell: reviewButtons },
          ],
          rows: event.pii || [],
          rowKey: (f) => f.path,
          empty: "Nothing in this event looks like personal data.",
        }),
      ),
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Schema"),
        table({
          caption: "Paths seen in the event, with their types (drift: appeared after the event was first seen)",
          columns: [
            { title: "Path", cell: (p) => h("code", {}, p.path) },
            {
              title: "Types",
              cell: (p) =>
                h(
                  "ul",
                  { class: "types" },
                  (p.types || []).map((t) => h("li", {}, `${t.type} (${number(t.count)})`, t.drift ? [" ", badge("drift")] : null)),
                ),
            },
            { title: "Events", numeric: true, cell: (p) => number(p.count) },
            { title: "First seen", cell: (p) => time(p.first_seen) },
            { title: "Last seen", cell: (p) => time(p.last_seen) },
            { title: "Drift", cell: (p) => (p.drift ? badge("drift") : "–") },
            {
              title: "PII",
              cell: (p) =>
                flagged.has(p.path)
                  ? badge(flagged.get(p.path).status)
                  : h(
                      "button",
                      { type: "button", class: "small secondary", "aria-label": `Mark ${p.path} as PII`, onclick: (e) => review(p.path, "confirm", e.currentTarget) },
                      "Mark as PII",
                    ),
            },
          ],
          rows: event.schema || [],
          rowKey: (p) => `schema:${p.path}`,
          empty: "No path recorded.",
        }),
      ),
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Examples (redacted)"),
        (event.examples || []).length
          ? h(
              "ol",
              { class: "examples" },
              event.examples.map((example) =>
                h(
                  "li",
                  {},
                  h("p", {}, time(example.accepted_at), " · source ", example.source || "unknown", " · event ", h("span", { class: "mono" }, example.event_id)),
                  json(example.payload),
                ),
              ),
            )
          : h("p", { class: "empty" }, "No example kept."),
      ),
    );
  }

  loadInto(body, () => api(path, { query: { window: window_ }, signal: context.signal }), show);
  return view;
}

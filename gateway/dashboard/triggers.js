// Triggers: the filterable list (GET /api/v1/triggers), kept up to date on its first page, and a
// trigger's page: its Sendmator summary (GET /api/v1/triggers/{id}) and the timeline of every
// workflow considered and every step run (GET /api/v1/triggers/{id}/workflow).

import { api } from "./api.js";
import { badge, facts, field, fill, h, number, route, table, tableRow, time } from "./dom.js";
import { TRIGGER_STATUSES } from "./overview.js";
import { announce, errorBox, filterForm, heading, pager, panel, shortId } from "./views.js";

const LIST_REFRESH_MS = 3000;
const PAGE_REFRESH_MS = 2000;
const FINAL = new Set(["completed", "failed", "cancelled"]);
const FILTERS = ["status", "event_name", "contact", "created_after", "created_before", "cursor"];

const COLUMNS = [
  { title: "Trigger", cell: (t) => h("a", { href: route("triggers", t.id), title: t.id, class: "mono" }, shortId(t.id)) },
  { title: "Event", cell: (t) => t.event_name || h("span", { class: "muted" }, t.trigger_type || "–") },
  { title: "Status", cell: (t) => badge(t.status) },
  { title: "Created", cell: (t) => time(t.created_at) },
  { title: "Completed", cell: (t) => time(t.completed_at) },
  { title: "Contacts", numeric: true, cell: (t) => number(t.summary?.total_contacts ?? 0) },
  { title: "Sent", numeric: true, cell: (t) => number(t.summary?.sent ?? 0) },
  { title: "Failed", numeric: true, cell: (t) => number(t.summary?.failed ?? 0) },
  { title: "Filtered", numeric: true, cell: (t) => number(t.summary?.filtered ?? 0) },
];

function listQuery(query) {
  const picked = {};
  for (const name of FILTERS) if (query[name]) picked[name] = query[name];
  return picked;
}

/** Swap a table's rows for new ones, keeping the keyboard focus on the same trigger's link. */
function replaceRows(tbody, triggers) {
  const focused = document.activeElement;
  const focusedKey = tbody.contains(focused) ? focused.closest("tr")?.dataset.key : null;
  tbody.replaceChildren(...triggers.map((t) => tableRow(COLUMNS, t, (row) => row.id)));
  if (focusedKey) tbody.querySelector(`tr[data-key="${CSS.escape(focusedKey)}"] a`)?.focus();
}

export function triggerList(context) {
  const query = listQuery(context.query);
  const statuses = new Set((query.status || "").split(",").filter(Boolean));
  const form = filterForm("/triggers", "Filter triggers", [
    h(
      "fieldset",
      { class: "statuses" },
      h("legend", {}, "Status"),
      TRIGGER_STATUSES.map((status) =>
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "status", value: status, checked: statuses.has(status) }), status),
      ),
    ),
    field("Event name", h("input", { name: "event_name", value: query.event_name || "", spellcheck: "false" }), "Exact name"),
    field("Contact", h("input", { name: "contact", value: query.contact || "", spellcheck: "false" }), "External id"),
    field("Created after", h("input", { name: "created_after", value: query.created_after || "", placeholder: "2024-12-10T10:00" }), "ISO 8601, UTC"),
    field("Created before", h("input", { name: "created_before", value: query.created_before || "", placeholder: "2024-12-11" }), "ISO 8601, UTC"),
  ]);
  const live = h("input", { type: "checkbox", id: "live", checked: !query.cursor });
  let tbody = null;
  const results = panel(null, async () => {
    const answer = await api("/api/v1/triggers", { query: { ...query, limit: 50 }, signal: context.signal });
    const node = table({
      caption: "Triggers, newest first",
      columns: COLUMNS,
      rows: answer.triggers || [],
      rowKey: (t) => t.id,
      empty: "No trigger matches these filters.",
    });
    tbody = node.querySelector("tbody");
    return [node, pager("/triggers", query, answer.next_cursor)];
  });
  context.every(LIST_REFRESH_MS, async () => {
    if (!live.checked || !tbody || !tbody.isConnected) return;
    try {
      const answer = await api("/api/v1/triggers", { query: { ...query, limit: 50 }, signal: context.signal });
      if ((answer.triggers || []).length && !tbody.children.length) {
        results.reload();
      } else {
        replaceRows(tbody, answer.triggers || []);
      }
    } catch {
      // The next tick tries again; a lasting problem shows when the list is reloaded.
    }
  });
  return h(
    "div",
    { class: "view" },
    heading("Triggers", h("label", { class: "check live" }, live, "Update every 3 seconds")),
    form,
    results,
  );
}

function stepItem(step) {
  return h(
    "li",
    { class: `step step-${step.status}` },
    h("div", { class: "step-head" }, h("span", { class: "step-id mono" }, step.step_id), h("span", { class: "muted" }, step.type), badge(step.status)),
    facts([
      ["Attempts", number(step.attempts || 0)],
      ["Finished", step.finished_at ? time(step.finished_at) : undefined],
      ["Waiting for", step.waiting_for || undefined],
      ["Until", step.waiting_until ? time(step.waiting_until) : undefined],
    ]),
    step.detail ? h("p", { class: step.status === "failed" ? "detail detail-error" : "detail" }, step.detail) : null,
  );
}

function workflowItem(entry) {
  const matched = entry.outcome === "matched";
  return h(
    "li",
    { class: `considered considered-${entry.outcome}` },
    h(
      "div",
      { class: "considered-head" },
      h("h3", {}, h("a", { href: route("workflows", entry.workflow_key) }, entry.workflow_key), ` v${entry.workflow_version}`),
      badge(entry.outcome),
      matched ? badge(entry.run_status || "pending") : null,
    ),
    matched
      ? facts([
          ["Contact", entry.contact_id ? h("span", { class: "mono" }, entry.contact_id) : ""],
          ["Run", entry.run_id ? h("span", { class: "mono" }, entry.run_id) : "not started yet"],
          ["Started", entry.run_started_at ? time(entry.run_started_at) : undefined],
          ["Finished", entry.run_finished_at ? time(entry.run_finished_at) : undefined],
        ])
      : h("p", { class: "reason" }, h("strong", {}, "Filtered: "), entry.reason || "no reason recorded"),
    matched && entry.steps?.length
      ? h("ol", { class: "steps", "aria-label": `Steps of ${entry.workflow_key}` }, entry.steps.map(stepItem))
      : null,
  );
}

function timelineNodes(detail) {
  const workflows = detail.workflows || [];
  return [
    detail.note ? h("p", { class: "note" }, detail.note) : null,
    workflows.length
      ? h("ol", { class: "timeline", "aria-label": "Workflows considered" }, workflows.map(workflowItem))
      : detail.note
        ? null
        : h("p", { class: "empty" }, "No workflow has considered this trigger yet."),
  ];
}

function summaryNodes(trigger, eventName) {
  const summary = trigger.summary || {};
  return facts([
    ["Status", badge(trigger.status)],
    ["Event", eventName ? h("a", { href: route("catalog", eventName) }, eventName) : undefined],
    ["Type", `${trigger.flow_type || "–"} / ${trigger.trigger_type || "–"}`],
    ["Created", time(trigger.created_at)],
    ["Started", time(trigger.started_at)],
    ["Completed", time(trigger.completed_at)],
    ["Contacts", number(summary.total_contacts ?? 0)],
    ["Sent", number(summary.sent ?? 0)],
    ["Failed", number(summary.failed ?? 0)],
    ["Filtered", number(summary.filtered ?? 0)],
  ]);
}

export function triggerPage(context) {
  const [id] = context.params;
  const summaryBody = h("div", { class: "panel-body", "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const timelineBody = h("div", { class: "panel-body", "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const statusLine = h("p", { class: "lede mono" }, id);
  const view = h(
    "div",
    { class: "view" },
    h("p", { class: "crumbs" }, h("a", { href: "#/triggers" }, "Triggers"), " / ", shortId(id)),
    heading("Trigger", statusLine),
    h("section", { class: "panel" }, h("h2", {}, "Summary"), summaryBody),
    h("section", { class: "panel" }, h("h2", {}, "Timeline"), timelineBody),
  );
  let finished = false;
  const load = async (first) => {
    const path = `/api/v1/triggers/${encodeURIComponent(id)}`;
    // Both asked for at once: the summary shows as soon as it is in.
    const [trigger, detail] = await Promise.allSettled([
      api(path, { signal: context.signal }),
      api(`${path}/workflow`, { signal: context.signal }),
    ]);
    if (trigger.status === "rejected") {
      const error = trigger.reason;
      if (error.name === "AbortError") return;
      if (error.kind === "notfound") {
        finished = true;
        fill(
          view,
          h("p", { class: "crumbs" }, h("a", { href: "#/triggers" }, "Triggers")),
          heading("Trigger not found"),
          h("div", { class: "error notfound", role: "alert" }, h("p", {}, `No trigger ${id} in your team: `, error.message, ".")),
          h("p", {}, h("a", { href: "#/triggers" }, "Back to the triggers")),
        );
        if (!first) return;
        view.querySelector("h1").focus();
        return;
      }
      if (first) fill(summaryBody, errorBox(error, () => load(true)));
      return;
    }
    const eventName = detail.status === "fulfilled" ? detail.value.event_name : "";
    fill(summaryBody, summaryNodes(trigger.value, eventName));
    summaryBody.removeAttribute("aria-busy");
    if (detail.status === "fulfilled") {
      fill(timelineBody, timelineNodes(detail.value));
      timelineBody.removeAttribute("aria-busy");
    } else if (first && detail.reason.name !== "AbortError") {
      fill(timelineBody, errorBox(detail.reason, () => load(true)));
    }
    const runs = detail.status === "fulfilled" ? detail.value.workflows || [] : [];
    const wasFinished = finished;
    finished = FINAL.has(trigger.value.status) && runs.every((entry) => entry.outcome !== "matched" || FINAL.has(entry.run_status));
    if (finished && !wasFinished && !first) announce(`Trigger ${trigger.value.status}`);
  };
  load(true);
  context.every(PAGE_REFRESH_MS, async () => {
    if (!finished) await load(false);
  });
  return view;
}

// Workflows: the list with version and state (GET /api/v1/workflows), a read-only view of one
// (GET /api/v1/workflows/{key} and its versions), and activate / pause
// (POST /api/v1/workflows/{key}/activate | /pause).

import { api } from "./api.js";
import { badge, facts, fill, h, json, number, route, table, time } from "./dom.js";
import { announce, errorBox, heading, loadInto, panel } from "./views.js";

// The fields a step of each type has (docs/api.md, Steps), in the order they read best.
const STEP_FIELDS = {
  email: ["subject", "body", "html", "max_attempts"],
  sms: ["body", "max_attempts"],
  push: ["title", "body", "url", "max_attempts"],
  in_app: ["title", "body", "url", "max_attempts"],
  webhook: ["method", "url", "headers", "body", "max_attempts"],
  delay: ["duration", "until"],
  wait_for_event: ["event", "timeout", "match", "on_timeout"],
  branch: ["condition", "then", "else"],
  exit: [],
};

function isActive(workflow) {
  return workflow.active !== false;
}

/** The Activate or Pause button of a workflow; `changed(workflow)` gets the answer. */
function toggleButton(workflow, changed, signal, status) {
  const active = isActive(workflow);
  const action = active ? "pause" : "activate";
  const button = h(
    "button",
    { type: "button", class: active ? "small secondary" : "small", "aria-label": `${active ? "Pause" : "Activate"} ${workflow.key}` },
    active ? "Pause" : "Activate",
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await api(`/api/v1/workflows/${encodeURIComponent(workflow.key)}/${action}`, { method: "POST", signal });
      announce(`${workflow.key} is ${isActive(answer) ? "active" : "paused"}.`);
      changed(answer);
    } catch (error) {
      button.disabled = false;
      if (error.name !== "AbortError" && status) fill(status, errorBox(error));
    }
  });
  return button;
}

function stateBadge(workflow) {
  return badge(isActive(workflow) ? "active" : "paused");
}

export function workflowList(context) {
  const status = h("div", { class: "action-status" });
  const columns = [
    { title: "Key", cell: (w) => h("a", { href: route("workflows", w.key) }, w.key) },
    { title: "Name", cell: (w) => w.name || "–" },
    { title: "Trigger event", cell: (w) => (w.trigger?.event ? h("code", {}, w.trigger.event) : "–") },
    { title: "Version", numeric: true, cell: (w) => number(w.version) },
    { title: "Steps", numeric: true, cell: (w) => number((w.steps || []).length) },
    { title: "State", cell: stateBadge },
    { title: "Updated", cell: (w) => time(w.created_at) },
    {
      title: "Action",
      cell: (w) => {
        const cell = h("span", {});
        const put = (workflow) => {
          const row = cell.closest("tr");
          row.querySelector("td:nth-child(6)").replaceChildren(stateBadge(workflow));
          const button = toggleButton(workflow, put, context.signal, status);
          cell.replaceChildren(button);
          button.focus();
        };
        cell.appendChild(toggleButton(w, put, context.signal, status));
        return cell;
      },
    },
  ];
  const results = panel(null, async () => {
    const answer = await api("/api/v1/workflows", { signal: context.signal });
    const workflows = (answer.workflows || []).slice().sort((a, b) => a.key.localeCompare(b.key));
    return table({ caption: "The team's workflows (latest versions)", columns, rows: workflows, empty: "No workflow yet: create one with POST /api/v1/workflows or herald workflows apply." });
  });
  return h("div", { class: "view" }, heading("Workflows"), status, results);
}

function stepValue(value) {
  if (value === undefined || value === null || value === "" || value === 0) return undefined;
  if (typeof value === "object") return json(value);
  return typeof value === "string" && value.includes("\n") ? h("pre", { class: "json" }, value) : String(value);
}

function stepNode(step, index) {
  const fields = STEP_FIELDS[step.type] || Object.keys(step).filter((name) => !["id", "type"].includes(name));
  return h(
    "li",
    { class: "step" },
    h("div", { class: "step-head" }, h("span", { class: "muted" }, `${index + 1}.`), h("span", { class: "step-id mono" }, step.id), badge(step.type)),
    facts(fields.map((name) => [name.replace(/_/g, " "), stepValue(step[name])])),
  );
}

function filtersNode(filters) {
  const set = Object.entries(filters || {}).filter(([, value]) => (Array.isArray(value) ? value.length : value));
  if (!set.length) return h("p", { class: "empty" }, "No filter: runs for every contact the event is about.");
  return facts(set.map(([name, value]) => [name.replace(/_/g, " "), Array.isArray(value) ? value.join(", ") : h("code", {}, String(value))]));
}

export function workflowPage(context) {
  const [key] = context.params;
  const path = `/api/v1/workflows/${encodeURIComponent(key)}`;
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const status = h("div", { class: "action-status" });
  const view = h("div", { class: "view" }, h("p", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows"), " / ", key), heading(key), status, body);
  const versions = panel("Versions", async () => {
    const answer = await api(`${path}/versions`, { signal: context.signal });
    return table({
      caption: "Every version, newest first",
      columns: [
        { title: "Version", numeric: true, cell: (w) => number(w.version) },
        { title: "Stored", cell: (w) => time(w.created_at) },
        { title: "State", cell: stateBadge },
        { title: "Steps", numeric: true, cell: (w) => number((w.steps || []).length) },
      ],
      rows: answer.versions || [],
    });
  });

  function show(workflow) {
    body.removeAttribute("aria-busy");
    const button = toggleButton(workflow, (changed) => {
      show(changed);
      versions.reload();
      body.querySelector(".toggle button")?.focus();
    }, context.signal, status);
    fill(
      body,
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Definition"),
        facts([
          ["Name", workflow.name || "–"],
          ["Trigger event", workflow.trigger?.event ? h("a", { href: route("catalog", workflow.trigger.event) }, workflow.trigger.event) : "–"],
          ["Version", number(workflow.version)],
          ["State", stateBadge(workflow)],
          ["Stored", time(workflow.created_at)],
        ]),
        h("div", { class: "toggle" }, button),
      ),
      h("section", { class: "panel" }, h("h2", {}, "Filters"), filtersNode(workflow.filters)),
      h("section", { class: "panel" }, h("h2", {}, "Steps"), h("ol", { class: "steps read-only" }, (workflow.steps || []).map(stepNode))),
      versions,
    );
  }

  loadInto(body, () => api(path, { signal: context.signal }), show);
  return view;
}

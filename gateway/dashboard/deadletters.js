// Dead letters: deliveries that failed for good, with their reasons (GET /api/v1/dlq), one letter
// (GET /api/v1/dlq/{id}), and replay (POST /api/v1/dlq/{id}/replay).

import { api } from "./api.js";
import { badge, facts, field, fill, h, number, route, select, table, time } from "./dom.js";
import { announce, errorBox, filterForm, heading, loadInto, pager, panel, shortId } from "./views.js";

const CHANNELS = ["email", "sms", "push", "webhook", "in_app"];

function shorten(text, length = 160) {
  return text && text.length > length ? `${text.slice(0, length - 1)}…` : text || "–";
}

/** The Replay button of a letter; `replayed(letter)` gets the letter as the API answers it. */
function replayButton(letter, replayed, signal, status) {
  const button = h(
    "button",
    { type: "button", class: "small", disabled: letter.status !== "dead", "aria-label": `Replay dead letter ${letter.id}` },
    "Replay",
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await api(`/api/v1/dlq/${encodeURIComponent(letter.id)}/replay`, { method: "POST", signal });
      announce(`Dead letter ${shortId(letter.id)} queued again.`);
      const done = h("p", { class: "ok", tabindex: "-1" }, `Replayed: the ${answer.channel || letter.channel} delivery of step ${answer.step_id || letter.step_id} is queued again.`);
      fill(status, done);
      replayed(answer, done);
    } catch (error) {
      if (error.name === "AbortError") return;
      fill(status, errorBox(error));
      button.disabled = letter.status !== "dead";
    }
  });
  return button;
}

export function deadLetterList(context) {
  const query = {};
  for (const name of ["status", "channel", "cursor"]) if (context.query[name]) query[name] = context.query[name];
  const status = h("div", { class: "action-status" });
  const form = filterForm("/dead-letters", "Filter dead letters", [
    field("Status", select("status", query.status || "", [["", "Any"], ["dead", "dead"], ["replayed", "replayed"]])),
    field("Channel", select("channel", query.channel || "", [["", "Any"], ...CHANNELS.map((c) => [c, c])])),
  ]);
  const columns = [
    { title: "Letter", cell: (d) => h("a", { href: route("dead-letters", d.id), title: d.id, class: "mono" }, shortId(d.id)) },
    { title: "Failed", cell: (d) => time(d.failed_at) },
    { title: "Channel", cell: (d) => d.channel },
    { title: "Step", cell: (d) => h("code", {}, d.step_id) },
    { title: "Reason", cell: (d) => h("span", { class: "reason", title: d.error }, shorten(d.error)) },
    { title: "Attempts", numeric: true, cell: (d) => number(d.attempts) },
    { title: "Status", cell: (d) => badge(d.status) },
    { title: "Replays", numeric: true, cell: (d) => number(d.replays || 0) },
    {
      title: "Action",
      cell: (d) => {
        const cell = h("span", {});
        cell.appendChild(
          replayButton(
            d,
            (letter) => {
              const row = cell.closest("tr");
              row.querySelector("td:nth-child(7)").replaceChildren(badge(letter.status));
              row.querySelector("td:nth-child(8)").replaceChildren(number(letter.replays || 0));
              row.querySelector("td:first-child a")?.focus();
            },
            context.signal,
            status,
          ),
        );
        return cell;
      },
    },
  ];
  const results = panel(null, async () => {
    const answer = await api("/api/v1/dlq", { query: { ...query, limit: 50 }, signal: context.signal });
    const total = answer.total;
    return [
      total !== undefined ? h("p", { class: "count" }, `Waiting for a replay: ${number(total)} dead letter${total === 1 ? "" : "s"} in all (whatever the filters).`) : null,
      table({ caption: "Dead letters, newest first", columns, rows: answer.dead_letters || [], rowKey: (d) => d.id, empty: "No dead letter: every delivery went through or is still being tried." }),
      pager("/dead-letters", query, answer.next_cursor),
    ];
  });
  return h("div", { class: "view" }, heading("Dead letters"), form, status, results);
}

export function deadLetterPage(context) {
  const [id] = context.params;
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const status = h("div", { class: "action-status" });
  const view = h(
    "div",
    { class: "view" },
    h("p", { class: "crumbs" }, h("a", { href: "#/dead-letters" }, "Dead letters"), " / ", shortId(id)),
    heading("Dead letter", h("p", { class: "lede mono" }, id)),
    status,
    body,
  );
  function show(letter) {
    body.removeAttribute("aria-busy");
    fill(
      body,
      h(
        "section",
        { class: "panel" },
        h("h2", {}, "Delivery"),
        facts([
          ["Status", badge(letter.status)],
          ["Channel", letter.channel],
          ["Step", h("code", {}, letter.step_id)],
          ["Attempts", number(letter.attempts)],
          ["Failed", time(letter.failed_at)],
          ["Replays", number(letter.replays || 0)],
          ["Replayed", letter.replayed_at ? time(letter.replayed_at) : undefined],
          ["Trigger", letter.trigger_id ? h("a", { href: route("triggers", letter.trigger_id), class: "mono" }, letter.trigger_id) : "–"],
          ["Run", h("span", { class: "mono" }, letter.run_id || "–")],
        ]),
        h("h3", {}, "Last error"),
        h("pre", { class: "json detail-error", tabindex: "0" }, letter.error || "–"),
        h(
          "div",
          { class: "toggle" },
          replayButton(letter, (answer, done) => {
            show(answer);
            done.focus();
          }, context.signal, status),
        ),
      ),
    );
  }
  loadInto(body, () => api(`/api/v1/dlq/${encodeURIComponent(id)}`, { signal: context.signal }), show);
  return view;
}

// Overview: the last hour per minute (GET /api/v1/stats/timeline) as charts, and the latency per
// event name with the bus's queues now (GET /api/v1/stats). Both are asked for at once and each
// part is drawn as soon as its answer arrives.

import { api } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { badge, decimal, h, milliseconds, number, route, seconds, table } from "./dom.js";
import { heading, panel } from "./views.js";

export const TRIGGER_STATUSES = ["scheduled", "queued", "processing", "completed", "failed", "cancelled"];
const REFRESH_MS = 15000;

/** Seconds in an ISO 8601 duration such as PT1M or PT30S (60 when it cannot be read). */
function durationSeconds(text) {
  const found = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(text || "");
  if (!found) return 60;
  const [, days = 0, hours = 0, minutes = 0, secs = 0] = found;
  return Number(days) * 86400 + Number(hours) * 3600 + Number(minutes) * 60 + Number(secs) || 60;
}

function tile(label, value, extra) {
  return h("div", { class: "tile" }, h("span", { class: "tile-label" }, label), h("span", { class: "tile-value" }, value), extra || null);
}

function sum(values) {
  return values.reduce((total, value) => total + (value || 0), 0);
}

function timelineNodes(timeline, dlqSize) {
  const buckets = timeline.buckets || [];
  const times = buckets.map((bucket) => bucket.at);
  const step = durationSeconds(timeline.step);
  const perSecond = buckets.map((bucket) => (bucket.events || 0) / step);
  const events = sum(buckets.map((bucket) => bucket.events));
  const byStatus = timeline.triggers_by_status || {};
  const deliveries = timeline.deliveries_by_channel || [];
  const sent = sum(deliveries.filter((d) => d.outcome === "sent").map((d) => d.count));
  const failed = sum(deliveries.filter((d) => d.outcome !== "sent").map((d) => d.count));
  const optional = (name) => buckets.map((bucket) => (bucket[name] === undefined ? null : bucket[name]));
  // The last full bucket: the current minute is still filling.
  const latestRate = perSecond.length > 1 ? perSecond[perSecond.length - 2] : perSecond[0] || 0;

  const tiles = h(
    "div",
    { class: "tiles" },
    tile("Events in the window", number(events)),
    tile("Events/s (last full minute)", decimal(latestRate)),
    tile("Triggers", number(sum(Object.values(byStatus)))),
    tile("Deliveries sent", number(sent)),
    tile("Deliveries failed", number(failed)),
    tile("Dead letters in the window", number(timeline.dead_letters || 0)),
    tile("DLQ size (waiting for a replay)", dlqSize === null ? "–" : h("a", { href: route("dead-letters"), "aria-label": `${dlqSize} dead letters: open the list` }, number(dlqSize))),
  );
  const charts = h(
    "div",
    { class: "charts" },
    lineChart({
      label: "Events per second",
      times,
      series: [{ name: "events/s", values: perSecond }],
      format: decimal,
    }),
    barChart({
      label: "Triggers by status",
      items: TRIGGER_STATUSES.map((status) => ({ label: status, value: byStatus[status] || 0, tone: status })),
      format: (v) => number(v),
    }),
    barChart({
      label: "Deliveries by channel and outcome",
      items: deliveries.map((d) => ({ label: `${d.channel} · ${d.outcome}`, value: d.count, tone: d.outcome })),
      format: (v) => number(v),
      empty: "No deliveries in this window.",
    }),
    lineChart({
      label: "Processing latency (accepted → first step done)",
      times,
      series: [
        { name: "p50", values: optional("p50_ms") },
        { name: "p99", values: optional("p99_ms") },
      ],
      format: milliseconds,
      empty: "No latency measured in this window.",
    }),
    lineChart({
      label: "Queue lag: messages not delivered yet",
      times,
      series: [{ name: "pending", values: optional("queue_pending") }],
      format: (v) => number(v),
      integer: true,
      empty: "No queue figures in this window.",
    }),
    lineChart({
      label: "Queue lag: age of the oldest waiting message",
      times,
      series: [{ name: "oldest", values: optional("queue_oldest_age_seconds") }],
      format: seconds,
      empty: "No queue figures in this window.",
    }),
    lineChart({
      label: "New dead letters per minute",
      times,
      series: [{ name: "dead letters", values: buckets.map((bucket) => bucket.dead_letters || 0) }],
      format: (v) => number(v),
      integer: true,
    }),
  );
  return [tiles, charts];
}

function statsNodes(stats) {
  const latency = (figures, key) => (figures ? milliseconds(figures[key]) : "–");
  return [
    h("h3", {}, "Latency per event name"),
    table({
      caption: "Processing latency per event name over the window",
      columns: [
        { title: "Event", cell: (row) => h("a", { href: route("catalog", row.event_name) }, row.event_name) },
        { title: "Triggers", numeric: true, cell: (row) => number(row.count) },
        { title: "Matched", numeric: true, cell: (row) => number(row.matched) },
        { title: "To matched p50", numeric: true, cell: (row) => latency(row.accepted_to_matched, "p50_ms") },
        { title: "To first step p50", numeric: true, cell: (row) => latency(row.accepted_to_first_step, "p50_ms") },
        { title: "To first step p99", numeric: true, cell: (row) => latency(row.accepted_to_first_step, "p99_ms") },
      ],
      rows: stats.events || [],
      empty: "No trigger was accepted in the window.",
    }),
    h("h3", {}, "Queues now"),
    table({
      caption: "The bus's consumers now",
      columns: [
        { title: "Stream", cell: (row) => row.stream },
        { title: "Consumer", cell: (row) => row.consumer },
        { title: "Pending", numeric: true, cell: (row) => number(row.pending) },
        { title: "Ack pending", numeric: true, cell: (row) => number(row.ack_pending) },
        { title: "Oldest waiting", numeric: true, cell: (row) => seconds(row.oldest_pending_age_seconds) },
        { title: "", cell: (row) => (row.pending > 0 || row.ack_pending > 0 ? badge("behind") : badge("ok")) },
      ],
      rows: stats.queues || [],
      empty: "No consumer reported.",
    }),
  ];
}

/** The DLQ's size (dead letters waiting for a replay), or null when it cannot be had. */
async function dlqSize(signal) {
  try {
    const answer = await api("/api/v1/dlq", { query: { limit: 1 }, signal });
    return answer.total ?? null;
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
}

export function overview(context) {
  // The timeline and the DLQ's size are asked for at once; each panel draws when its own
  // answers arrive.
  const timeline = () => api("/api/v1/stats/timeline", { query: { window: "PT1H", step: "PT1M" }, signal: context.signal });
  const timelinePanel = panel(null, async () => timelineNodes(...(await Promise.all([timeline(), dlqSize(context.signal)]))));
  // The per-event table comes second: its answer is the slower one with a busy project, so it
  // is asked for once the charts (what the overview is for) have their answer.
  const statsPanel = panel("Latency per event name and queues now", async () => {
    await timelinePanel.loaded;
    return statsNodes(await api("/api/v1/stats", { query: { window: "PT1H" }, signal: context.signal }));
  });
  // User Timing marks, for whoever measures how fast the first view is (scripts/dashboard_first_view.py).
  timelinePanel.loaded.then(() => performance.mark("herald:overview:charts"));
  statsPanel.loaded.then(() => performance.mark("herald:overview:latency"));
  const refresh = () => Promise.all([timelinePanel.reload(), statsPanel.reload()]);
  context.every(REFRESH_MS, refresh);
  return h(
    "div",
    { class: "view overview" },
    heading(
      "Overview",
      h("p", { class: "lede" }, "The last hour, per minute (UTC). Updated every 15 seconds. "),
      h("button", { type: "button", class: "secondary", onclick: refresh }, "Refresh now"),
    ),
    timelinePanel,
    statsPanel,
  );
}

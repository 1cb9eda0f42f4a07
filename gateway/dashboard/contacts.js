// Contacts: search by external id or email (GET /api/v1/contacts?q=), and a contact's page: the
// profile (GET /api/v1/contacts/{external_id}) and its timeline (…/timeline), newest first.

import { api } from "./api.js";
import { badge, facts, field, h, route, table, time } from "./dom.js";
import { errorBox, filterForm, heading, pager, panel, shortId } from "./views.js";

export function contactList(context) {
  const query = {};
  for (const name of ["q", "cursor"]) if (context.query[name]) query[name] = context.query[name];
  const form = filterForm("/contacts", "Search contacts", [
    field("External id or email", h("input", { name: "q", value: query.q || "", spellcheck: "false", type: "search" }), "The beginning of either"),
  ]);
  const results = panel(null, async () => {
    const answer = await api("/api/v1/contacts", { query: { ...query, limit: 50 }, signal: context.signal });
    return [
      table({
        caption: query.q ? `Contacts whose external id or email starts with “${query.q}”` : "Contacts",
        columns: [
          {
            title: "External id",
            cell: (c) => (c.external_id ? h("a", { href: route("contacts", c.external_id) }, c.external_id) : h("span", { class: "muted", title: c.id }, "(none)")),
          },
          { title: "Email", cell: (c) => c.email || "–" },
          { title: "Name", cell: (c) => c.name || "–" },
          { title: "Tags", cell: (c) => (c.tags || []).join(", ") || "–" },
          { title: "Updated", cell: (c) => time(c.updated_at) },
        ],
        rows: answer.contacts || [],
        empty: query.q ? "No contact's external id or email starts with that." : "No contact yet.",
      }),
      pager("/contacts", query, answer.next_cursor),
    ];
  });
  return h("div", { class: "view" }, heading("Contacts"), form, results);
}

function entryNode(entry) {
  return h(
    "li",
    { class: `entry entry-${entry.kind}` },
    h(
      "div",
      { class: "entry-head" },
      time(entry.at),
      badge(entry.kind),
      entry.event_name ? h("code", {}, entry.event_name) : null,
      entry.workflow_key ? h("a", { href: route("workflows", entry.workflow_key) }, entry.workflow_key) : null,
      entry.step_id ? h("span", { class: "mono" }, `step ${entry.step_id}`) : null,
      entry.channel ? h("span", {}, entry.channel) : null,
      entry.outcome ? badge(entry.outcome) : null,
      entry.trigger_id ? h("a", { href: route("triggers", entry.trigger_id), class: "mono", title: entry.trigger_id }, `trigger ${shortId(entry.trigger_id)}`) : null,
    ),
    entry.detail ? h("p", { class: entry.outcome === "failed" ? "detail detail-error" : "detail" }, entry.detail) : null,
  );
}

export function contactPage(context) {
  const [externalId] = context.params;
  const path = `/api/v1/contacts/${encodeURIComponent(externalId)}`;
  // Profile and timeline are asked for at once.
  const profile = panel("Profile", async () => {
    const contact = await api(path, { signal: context.signal });
    return facts([
      ["Herald id", h("span", { class: "mono" }, contact.id)],
      ["Email", contact.email || "–"],
      ["Phone", contact.phone || "–"],
      ["Name", contact.name || "–"],
      ["Tags", (contact.tags || []).join(", ") || "–"],
      ["Topics", (contact.topics || []).join(", ") || "–"],
      ["Custom fields", Object.keys(contact.custom_fields || {}).length ? h("pre", { class: "json" }, JSON.stringify(contact.custom_fields, null, 2)) : "–"],
      ["Created", time(contact.created_at)],
      ["Updated", time(contact.updated_at)],
      ["Triggers", h("a", { href: `#/triggers?contact=${encodeURIComponent(externalId)}` }, "This contact's triggers")],
    ]);
  });
  const list = h("ol", { class: "entries", "aria-label": "Timeline, newest first" });
  const more = h("div", { class: "pager" });
  const loadPage = async (cursor) => {
    const answer = await api(`${path}/timeline`, { query: { limit: 50, cursor }, signal: context.signal });
    for (const entry of answer.entries || []) list.appendChild(entryNode(entry));
    more.replaceChildren();
    if (answer.next_cursor) {
      const button = h("button", { type: "button", class: "secondary" }, "Show older");
      button.addEventListener("click", async () => {
        button.disabled = true;
        const first = list.children.length;
        try {
          await loadPage(answer.next_cursor);
          const older = list.children[first];
          if (older) {
            older.setAttribute("tabindex", "-1");
            older.focus();
          }
        } catch (error) {
          button.disabled = false;
          if (error.name !== "AbortError") more.replaceChildren(errorBox(error), button);
        }
      });
      more.appendChild(button);
    }
    return answer;
  };
  const timeline = panel("Timeline", async () => {
    list.replaceChildren();
    const answer = await loadPage("");
    return answer.entries?.length ? [list, more] : h("p", { class: "empty" }, "Nothing has happened to this contact yet.");
  });
  return h(
    "div",
    { class: "view" },
    h("p", { class: "crumbs" }, h("a", { href: "#/contacts" }, "Contacts"), " / ", externalId),
    heading(externalId),
    h("div", { class: "two-columns" }, profile, timeline),
  );
}

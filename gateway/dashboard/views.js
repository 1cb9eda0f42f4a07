// What every view shares: panels that load on their own (so a page fills in as its answers
// arrive), error boxes that say what happened and offer a retry, filter forms kept in the URL's
// hash, pagers and the polite announcer.

import { ApiError } from "./api.js";
import { fill, h, routeWithQuery } from "./dom.js";

/** Say something to screen-reader users without moving focus. */
export function announce(text) {
  const announcer = document.getElementById("announcer");
  announcer.textContent = "";
  // A new text node in a later frame is announced even when the text repeats.
  requestAnimationFrame(() => {
    announcer.textContent = text;
  });
}

/** What went wrong, in words, with a "Try again" button when trying again can help. */
export function errorBox(error, retry) {
  if (!(error instanceof ApiError)) {
    console.error(error);
    return h("div", { class: "error", role: "alert" }, h("p", {}, "Something went wrong while showing this: ", String(error.message || error)));
  }
  if (error.kind === "notfound") {
    return h("div", { class: "error notfound", role: "alert" }, h("p", {}, h("strong", {}, "Not found. "), error.message));
  }
  if (error.retryable) {
    return h(
      "div",
      { class: "error", role: "alert" },
      h("p", {}, h("strong", {}, error.kind === "network" ? "No answer. " : `Herald answered ${error.status}. `), error.message),
      retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
    );
  }
  return h("div", { class: "error", role: "alert" }, h("p", {}, h("strong", {}, `Refused (${error.status}). `), error.message));
}

/**
 * A section that fills itself: `load()` answers the node to show (or throws). Its own error box
 * and retry, so one slow or failed answer never holds the rest of the page.
 */
export function panel(title, load, { className = "" } = {}) {
  const body = h("div", { class: "panel-body", "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
  const heading = title ? h("h2", {}, title) : null;
  const node = h("section", { class: `panel ${className}` }, heading, body);
  const run = async () => {
    body.setAttribute("aria-busy", "true");
    try {
      fill(body, await load());
    } catch (error) {
      if (error.name === "AbortError" || (error instanceof ApiError && error.kind === "auth")) return;
      fill(body, errorBox(error, run));
    } finally {
      body.removeAttribute("aria-busy");
    }
  };
  node.reload = run;
  node.loaded = run();
  return node;
}

/**
 * Fill a detail view's `body` (shown busy, "Loading…") with `show(answer)` once `fetch()` answers;
 * on failure, an error box whose "Try again" fetches again. A fetch aborted because the view was
 * left shows nothing.
 */
export function loadInto(body, fetch, show) {
  const load = async () => {
    try {
      show(await fetch());
    } catch (error) {
      if (error.name === "AbortError") return;
      body.removeAttribute("aria-busy");
      fill(body, errorBox(error, load));
    }
  };
  return load();
}

/** The page heading; focused after each navigation so keyboard users start at the top. */
export function heading(text, ...extra) {
  return h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, text), extra);
}

/**
 * A filter form whose fields go into the hash (#/path?name=value), so a filtered list is a
 * link one can share or go back to. `controls` are field() nodes whose inputs have names.
 */
export function filterForm(path, label, controls) {
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": label },
    controls,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply"), h("a", { href: `#${path}`, class: "button secondary" }, "Clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = {};
    for (const [name, value] of new FormData(form)) {
      const text = String(value).trim();
      if (!text) continue;
      query[name] = query[name] ? `${query[name]},${text}` : text;
    }
    const target = `#${routeWithQuery(path, query)}`;
    if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else location.hash = target;
  });
  return form;
}

/** "Next page" for cursor paging (and "First page" when not on it), as plain links. */
export function pager(path, query, nextCursor) {
  const links = [];
  if (query.cursor) links.push(h("a", { href: `#${routeWithQuery(path, { ...query, cursor: "" })}`, class: "button secondary" }, "First page"));
  if (nextCursor) links.push(h("a", { href: `#${routeWithQuery(path, { ...query, cursor: nextCursor })}`, class: "button secondary", rel: "next" }, "Next page"));
  return links.length ? h("nav", { class: "pager", "aria-label": "Pages" }, links) : null;
}

/** A short form of a UUID for tables; the whole id stays in the title. */
export function shortId(id) {
  return id ? `${id.slice(0, 8)}…` : "–";
}

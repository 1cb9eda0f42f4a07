// The dashboard's shell: sign-in with an API key, the hash router (#/view/param?filters) and the
// navigation. Every view lives in its own module and reads Herald through the public REST API.

import { api, ApiError, apiKey, setApiKey, whenUnauthorized } from "./api.js";
import { field, fill, h } from "./dom.js";
import { overview } from "./overview.js";
import { errorBox } from "./views.js";

// The overview is the first view, so it comes with the page; the other views' modules are
// fetched when first opened (and cached for good after that).
const lazy = (module, name) => async (context) => (await import(module))[name](context);
const ROUTES = [
  ["overview", /^$/, async (context) => overview(context), "Overview"],
  ["overview", /^overview$/, async (context) => overview(context), "Overview"],
  ["triggers", /^triggers$/, lazy("./triggers.js", "triggerList"), "Triggers"],
  ["triggers", /^triggers\/([^/]+)$/, lazy("./triggers.js", "triggerPage"), "Trigger"],
  ["catalog", /^catalog$/, lazy("./catalog.js", "catalogList"), "Event catalog"],
  ["catalog", /^catalog\/([^/]+)$/, lazy("./catalog.js", "catalogEvent"), "Event"],
  ["workflows", /^workflows$/, lazy("./workflows.js", "workflowList"), "Workflows"],
  ["workflows", /^workflows\/([^/]+)$/, lazy("./workflows.js", "workflowPage"), "Workflow"],
  ["dead-letters", /^dead-letters$/, lazy("./deadletters.js", "deadLetterList"), "Dead letters"],
  ["dead-letters", /^dead-letters\/([^/]+)$/, lazy("./deadletters.js", "deadLetterPage"), "Dead letter"],
  ["contacts", /^contacts$/, lazy("./contacts.js", "contactList"), "Contacts"],
  ["contacts", /^contacts\/([^/]+)$/, lazy("./contacts.js", "contactPage"), "Contact"],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
let current = null; // {controller, timers}
let firstView = true;

/** The hash as a path and a query: "#/triggers?status=failed" → ["triggers", {status: "failed"}]. */
function location_() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?", 2);
  return [path.replace(/\/+$/, ""), Object.fromEntries(new URLSearchParams(search))];
}

function leaveView() {
  if (!current) return;
  current.controller.abort();
  for (const timer of current.timers) clearInterval(timer);
  current = null;
}

async function render() {
  leaveView();
  if (!apiKey()) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  const [path, query] = location_();
  const match = ROUTES.map(([name, pattern, view, title]) => [name, path.match(pattern), view, title]).find(([, found]) => found);
  const controller = new AbortController();
  current = { controller, timers: [] };
  const state = current;
  const context = {
    query,
    signal: controller.signal,
    /** Run `callback` every `ms` while this view is shown and the tab is visible. */
    every(ms, callback) {
      let running = false;
      const timer = setInterval(async () => {
        if (running || document.hidden || state !== current) return;
        running = true;
        try {
          await callback();
        } finally {
          running = false;
        }
      }, ms);
      state.timers.push(timer);
    },
  };
  for (const link of nav.querySelectorAll("a")) {
    if (match && link.dataset.view === match[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  let content;
  if (!match) {
    document.title = "Not found · Herald";
    content = h("div", {}, h("h1", { tabindex: "-1" }, "Page not found"), h("p", {}, "There is no such view. "), h("p", {}, h("a", { href: "#/overview" }, "Go to the overview")));
  } else {
    const [, found, view, title] = match;
    const params = found.slice(1).map((part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    });
    document.title = `${params[0] ? `${params[0]} · ` : ""}${title} · Herald`;
    try {
      content = await view({ ...context, params });
    } catch (error) {
      // A view's module that cannot be fetched is a network problem: reloading the view retries.
      content = errorBox(
        error instanceof ApiError ? error : new ApiError(0, `This view could not be loaded (${error.message}).`, "network"),
        render,
      );
    }
    if (state !== current) return; // navigated elsewhere meanwhile
  }
  fill(main, content);
  if (!firstView) {
    const title = main.querySelector("h1");
    (title || main).focus({ preventScroll: false });
  }
  firstView = false;
}

function showSignIn(message) {
  nav.hidden = true;
  signOutButton.hidden = true;
  document.title = "Sign in · Herald";
  const input = h("input", {
    type: "password",
    name: "api_key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    id: "api-key",
  });
  const status = h("div", { id: "sign-in-status" }, message ? h("div", { class: "error", role: "alert" }, h("p", {}, message)) : null);
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", tabindex: "-1" }, "Sign in to Herald"),
    h(
      "p",
      {},
      "Use an API key of your team (",
      h("code", {}, "herald keys create --team T"),
      "; ",
      h("code", {}, "make run"),
      " prints a development key). The key stays in this browser tab only and is sent with each API request.",
    ),
    field("API key", input),
    status,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    const problem = !key ? "Enter an API key." : /[^\x21-\x7e]/.test(key) ? "An API key has only printable characters and no spaces: check what was pasted." : "";
    if (problem) {
      fill(status, h("div", { class: "error", role: "alert" }, h("p", {}, problem)));
      input.focus();
      return;
    }
    button.disabled = true;
    fill(status, h("p", { class: "loading" }, "Checking the key…"));
    try {
      await api("/api/v1/project/policy", { key });
    } catch (error) {
      button.disabled = false;
      if (error instanceof ApiError && error.kind === "auth") {
        fill(
          status,
          h(
            "div",
            { class: "error", role: "alert" },
            h("p", {}, h("strong", {}, "This API key was not accepted. "), `Herald answered: ${error.message}. Check that the whole key was pasted and that it has not been revoked.`),
          ),
        );
      } else {
        fill(status, errorBox(error, () => form.requestSubmit()));
      }
      input.focus();
      return;
    }
    setApiKey(key);
    render();
  });
  fill(main, form);
  input.focus();
}

whenUnauthorized(() => {
  setApiKey("");
  leaveView();
  showSignIn("Herald no longer accepts the API key of this session (it may have been revoked): sign in again.");
});

signOutButton.addEventListener("click", () => {
  setApiKey("");
  leaveView();
  showSignIn();
});

document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", render);
render();

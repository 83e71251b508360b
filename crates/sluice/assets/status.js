// The Sluice status page: asks the admin API every 2 seconds and draws what it answers.
//
// Plain DOM code, no framework. Every value from the API goes into the page as text
// (`append` of a string, `textContent`), never as HTML, so nothing an API answer holds can
// run or change the page's structure.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "sluice-admin-token";
let nextPoll = null;
// Each endpoint (under api/) and the function drawing its answer into the element of that id.
const SECTIONS = {
  listeners: drawListeners,
  routes: drawRoutes,
  services: drawServices,
  policies: drawPolicies,
  catalog: drawCatalog,
  reloads: drawReloads,
};

/** An element with attributes (`class`, `data-*`, ...) and children (strings become text). */
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== null && value !== undefined) {
      node.setAttribute(name, String(value));
    }
  }
  node.append(...children.filter((c) => c !== null && c !== undefined).map(asChild));
  return node;
}

function asChild(child) {
  return child instanceof Node ? child : String(child);
}

/** A table with one header row; `rows` are arrays of cells or already built `<tr>`s. */
function table(headings, rows) {
  const head = el("tr", {}, ...headings.map((h) => el("th", {}, h)));
  const body = rows.map((row) =>
    row instanceof Node ? row : el("tr", {}, ...row.map((cell) => el("td", {}, cell))),
  );
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function empty(text) {
  return el("p", { class: "quiet" }, text);
}

/** A coloured label; its class is the text in lower case with dashes (`not-synced`). */
function badge(text) {
  return el("span", { class: `badge ${text.toLowerCase().replace(/\s+/g, "-")}` }, text);
}

/** `1.2 s`, `35 ms`: a duration given in milliseconds, for people. */
function duration(ms) {
  if (ms === null || ms === undefined) {
    return "";
  }
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

// ---- Fetching -------------------------------------------------------------------------------

/** Thrown when the API wants a token (401): the page asks for one instead of drawing. */
class NeedsToken extends Error {}

async function fetchJson(endpoint) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  const response = await fetch(`api/${endpoint}`, { headers, cache: "no-store" });
  if (response.status === 401) {
    throw new NeedsToken(token ? "The token was refused." : "This admin API needs a token.");
  }
  return { ok: response.ok, status: response.status, body: await response.json() };
}

async function poll() {
  try {
    const names = Object.keys(SECTIONS);
    const answers = await Promise.all(names.map(fetchJson));
    names.forEach((name, i) => draw(name, answers[i]));
    showProblem(null);
    showTokenForm(null);
    document.getElementById("updated").textContent =
      `Updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s`;
  } catch (error) {
    if (error instanceof NeedsToken) {
      showTokenForm(error.message);
    } else {
      showProblem(`Cannot read the admin API: ${error.message}`);
    }
  }
  // The next round starts after this one ends, so a slow answer never piles rounds up; a
  // round started early (a token was just entered) replaces the one planned.
  clearTimeout(nextPoll);
  nextPoll = setTimeout(poll, POLL_MS);
}

function draw(name, answer) {
  const target = document.getElementById(name);
  if (!answer.ok && name !== "catalog") {
    target.replaceChildren(el("p", { class: "problem" }, `HTTP ${answer.status}: ${answer.body.error}`));
    return;
  }
  target.replaceChildren(...[SECTIONS[name](answer.body, answer)].flat());
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.hidden = text === null;
  problem.textContent = text || "";
}

function showTokenForm(reason) {
  document.getElementById("token-form").hidden = reason === null;
  document.getElementById("status").hidden = reason !== null;
  if (reason !== null) {
    document.getElementById("token-reason").textContent = reason;
  }
}

function useToken(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  showTokenForm(null);
  poll();
}

// ---- Sections -------------------------------------------------------------------------------

function drawListeners(listeners) {
  const names = Object.keys(listeners).sort();
  if (names.length === 0) {
    return empty("No listener.");
  }
  return table(
    ["Listener", "Bound address"],
    names.map((name) => el("tr", { "data-listener": name }, el("td", {}, name), el("td", {}, listeners[name]))),
  );
}

function drawRoutes(routes) {
  if (routes.length === 0) {
    return empty("No route.");
  }
  return table(
    ["Route", "Listener", "Host", "Path", "Goes to", "Options"],
    routes.map((r) => [r.name, r.listener, r.host, r.path, routeTarget(r), routeOptions(r)]),
  );
}

function routeTarget(route) {
  if (route.redirect) {
    return `redirect ${route.redirect.code} ${route.redirect.url}`;
  }
  return route.service || "";
}

function routeOptions(route) {
  const options = [];
  if (route.strip) options.push(`strip ${route.strip}`);
  if (route.prepend) options.push(`prepend ${route.prepend}`);
  if (route.allow) options.push(`allow ${route.allow.join(", ")}`);
  if (route.deny) options.push(`deny ${route.deny.join(", ")}`);
  if (route.upstream_host) options.push(`Host: ${route.upstream_host}`);
  return options.join("; ");
}

function drawServices(services) {
  if (services.length === 0) {
    return empty("No service.");
  }
  return services.map((service) =>
    el("div", { class: "service", "data-service": service.name },
      el("h3", {}, service.name, " ", el("span", { class: "quiet" }, serviceSummary(service))),
      service.split_brain ? el("p", { class: "problem" }, "Several instances claim the primary role.") : null,
      instanceTable(service.instances)),
  );
}

function serviceSummary(service) {
  const parts = [service.balancer, `serve ${service.serve}`];
  if (service.primary) parts.push(`primary ${service.primary}`);
  parts.push(`ejected ${service.ejected} of at most ${service.max_ejected}`);
  return parts.join(" · ");
}

function instanceTable(instances) {
  if (instances.length === 0) {
    return empty("No instance: requests get 503.");
  }
  return table(
    ["Instance", "State", "Role", "Health", "Last probe", "EWMA", "In flight", "Requests", "Failures", "Ejections"],
    instances.map(instanceRow),
  );
}

function instanceRow(instance) {
  const health = instance.health;
  const ejectedFor = instance.ejected_for_ms === null ? "" : ` (${duration(instance.ejected_for_ms)} left)`;
  return el("tr", { "data-instance": instance.address, "data-state": instance.state, class: `row-${instance.state}` },
    el("td", {}, instance.address),
    el("td", {}, badge(instance.state), ejectedFor),
    el("td", {}, (health && health.role) || ""),
    el("td", { class: "nowrap" }, health ? healthText(health) : "no check"),
    el("td", {}, health && health.last_probe ? probeText(health.last_probe) : ""),
    el("td", { class: "number" }, `${instance.ewma_ms.toFixed(1)} ms`),
    el("td", { class: "number" }, instance.outstanding),
    el("td", { class: "number" }, instance.requests),
    el("td", { class: "number" }, instance.failures),
    el("td", { class: "number" }, instance.ejections),
  );
}

function healthText(health) {
  const since = health.since_ms_ago === null ? "" : ` for ${duration(health.since_ms_ago)}`;
  return `${health.status}${since}${health.stale ? " (stale: the policy failed)" : ""}`;
}

function probeText(probe) {
  const error = probe.evaluator_error ? `; policy error: ${probe.evaluator_error}` : "";
  return `${probe.result}, ${duration(probe.ms_ago)} ago, took ${duration(probe.latency_us / 1000)}${error}`;
}

function drawPolicies(policies) {
  if (policies.length === 0) {
    return empty("No policy loaded.");
  }
  return table(
    ["Policy", "World", "State", "Calls", "Errors", "Suspended", "Last error"],
    policies.map((p) => [
      p.name,
      p.world,
      badge(p.state),
      p.calls,
      p.errors,
      p.state === "suspended" ? `retry in ${duration(p.retry_in_ms)}` : "no",
      p.last_load_error || p.last_error || "",
    ]),
  );
}

function drawCatalog(catalog, answer) {
  // Without [[discovery]] the catalog has no source (older versions answered an error).
  if (!answer.ok || !catalog.sources || catalog.sources.length === 0) {
    return empty("No discovery configured.");
  }
  const sources = table(
    ["Source", "Kind", "State", "Stale for", "Instances", "Last error"],
    catalog.sources.map((s) => [
      s.name,
      s.kind,
      badge(sourceState(s)),
      s.stale ? duration(s.age_seconds * 1000) : "",
      s.instances,
      s.last_error || "",
    ]),
  );
  const rebuild = catalog.last_rebuild;
  const summary = rebuild
    ? el("p", { class: "quiet" }, `Catalog version ${catalog.version}; last route rebuild: ${rebuild.result}, ${rebuild.routes} routes${rebuild.error ? `: ${rebuild.error}` : ""}`)
    : null;
  return [sources, summary].filter((n) => n !== null);
}

function sourceState(source) {
  if (!source.synced) return "not synced";
  return source.stale ? "stale" : "synced";
}

function drawReloads(reloads) {
  if (reloads.length === 0) {
    return empty("No reload since start-up.");
  }
  return table(
    ["Time", "Trigger", "Result", "Error"],
    reloads.map((r) =>
      el("tr", { "data-reload": r.result },
        el("td", {}, r.time),
        el("td", {}, r.trigger.replace("_", " ")),
        el("td", {}, badge(r.result)),
        el("td", {}, r.error ? el("pre", {}, r.error) : ""),
      ),
    ),
  );
}

// ---- Start ----------------------------------------------------------------------------------

document.getElementById("token-form").addEventListener("submit", useToken);
poll();

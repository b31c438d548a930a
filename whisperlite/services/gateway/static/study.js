// The relevance-judgement page: no build step, talks to the gateway's /v1/study routes.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function call(method, url, body) {
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (error) {
    throw new Error(`the gateway could not be reached (${error.message}); check that it runs, then try again`);
  }
  // A proxy in front of the gateway may answer with an HTML page: say what came back instead of a JSON parse error.
  const json = (response.headers.get("content-type") || "").includes("application/json");
  const data = json ? await response.json() : null;
  if (!response.ok) {
    const error = (data && data.error) || { code: `HTTP ${response.status}`, message: response.statusText || "no message" };
    throw new Error(`${error.code}: ${error.message}`);
  }
  if (!json) {
    throw new Error(`HTTP ${response.status}: expected JSON, got ${response.headers.get("content-type") || "no content type"}`);
  }
  return data;
}

function clearComparison() {
  // A failed request must not leave the previous comparison's lists, status line or address behind.
  $("lists").replaceChildren();
  $("status").textContent = "";
  history.replaceState(null, "", location.pathname);
}

function fmt(value) {
  return value.toFixed(3);
}

function renderItem(comparison, list, item) {
  const li = document.createElement("li");
  li.dataset.rank = item.rank;
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = item.title || item.item_id;
  const explain = document.createElement("div");
  explain.className = "explain";
  explain.textContent = comparison.blind
    ? `score ${fmt(item.score)}`
    : `score ${fmt(item.score)} · query match ${fmt(item.query_match)} · personal affinity ${fmt(item.personal_affinity)}`;
  li.append(title, explain);
  for (const [label, relevant] of [["Relevant", true], ["Not relevant", false]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.setAttribute("aria-label", `${label}: ${list.position} list, rank ${item.rank}`);
    button.setAttribute("aria-pressed", String(item.relevant === relevant));
    button.addEventListener("click", () => judge(comparison, list, item, relevant, li));
    li.append(" ", button);
  }
  markItem(li, item.relevant);
  return li;
}

function markItem(li, relevant) {
  li.classList.toggle("relevant", relevant === true);
  li.classList.toggle("not-relevant", relevant === false);
  li.dataset.judged = relevant === null || relevant === undefined ? "" : String(relevant);
  for (const button of li.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String((button.textContent === "Relevant") === relevant && relevant !== null));
  }
}

async function judge(comparison, list, item, relevant, li) {
  try {
    const stored = await call("PUT", `/v1/study/comparisons/${comparison.comparison_id}/judgements`, {
      position: list.position,
      rank: item.rank,
      relevant,
    });
    item.relevant = stored.relevant;
    markItem(li, stored.relevant);
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

function render(comparison) {
  const lists = $("lists");
  lists.replaceChildren();
  for (const list of comparison.lists) {
    const section = document.createElement("section");
    section.id = `list-${list.position}`;
    section.setAttribute("aria-label", `${list.position} list`);
    const heading = document.createElement("h2");
    heading.textContent = comparison.blind
      ? `List ${list.position === "left" ? "A" : "B"}`
      : list.side === "personalized" ? "Personalized" : "Non-personal (request text only)";
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = comparison.blind ? "" : `path ${list.path.replace("PERSONALIZATION_PATH_", "")}, model ${list.model_version || "none"}`;
    const ol = document.createElement("ol");
    for (const item of list.items) ol.append(renderItem(comparison, list, item));
    if (!list.items.length) meta.textContent += " (no items)";
    section.append(heading, meta, ol);
    lists.append(section);
  }
  $("status").textContent = `Comparison ${comparison.comparison_id}: "${comparison.query}" for ${comparison.user_id || "no user"}`;
}

async function ask(event) {
  event.preventDefault();
  showError("");
  const body = {
    user_id: $("user").value.trim(),
    query: $("query").value,
    top_k: Number($("top_k").value),
    recent_item_ids: $("recent").value.split(",").map((id) => id.trim()).filter(Boolean),
  };
  try {
    const comparison = await call("POST", "/v1/study/comparisons", body);
    // The comparison id in the address lets a reload show the same lists with their judgements.
    history.replaceState(null, "", `?comparison=${comparison.comparison_id}`);
    render(comparison);
  } catch (error) {
    clearComparison();
    showError(error.message);
  }
}

async function start() {
  $("ask").addEventListener("submit", ask);
  try {
    const { users } = await call("GET", "/v1/study/users");
    $("users").replaceChildren(...users.map((user) => Object.assign(document.createElement("option"), { value: user })));
  } catch (error) {
    showError(error.message);
  }
  const id = new URLSearchParams(location.search).get("comparison");
  if (id) {
    try {
      const comparison = await call("GET", `/v1/study/comparisons/${encodeURIComponent(id)}`);
      $("user").value = comparison.user_id;
      $("query").value = comparison.query;
      render(comparison);
    } catch (error) {
      showError(error.message);
    }
  }
}

start();

// The relevance-judgement page: no build step, talks to the gateway's /v1/study routes.
"use strict";

const $ = (id) => document.getElementById(id);

// A gateway started with --auth-tokens-file answers the study's routes only to a token with the 'recommend' scope.
// The page asks for one when a call is refused and keeps it in this tab's sessionStorage: never in the address
// (it would be in the history and in shared links) nor in localStorage (it would outlive the tab).
const TOKEN_KEY = "whisperlite.study.token";
const TOKEN_SHAPE = /^[\x21-\x7e]+$/; // what an HTTP header (and gRPC metadata, where the gateway passes it) carries
let refused = []; // calls refused for want of a usable token, made again once one is given

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showTokenState() {
  $("token-state").hidden = !storedToken();
}

function askForToken() {
  $("token-form").hidden = false;
  showTokenState();
  $("token").focus();
}

// A 401 or 403 of the gateway: the page asks for a token and makes the call again with it.
class TokenRefused extends Error {}

async function call(method, url, body) {
  const headers = body ? { "content-type": "application/json" } : {};
  const token = storedToken();
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : undefined });
  } catch (error) {
    throw new Error(`the gateway could not be reached (${error.message}); check that it runs, then try again`);
  }
  // A proxy in front of the gateway may answer with an HTML page: say what came back instead of a JSON parse error.
  const json = (response.headers.get("content-type") || "").includes("application/json");
  const data = json ? await response.json() : null;
  if (!response.ok) {
    const error = (data && data.error) || { code: `HTTP ${response.status}`, message: response.statusText || "no message" };
    const said = `${error.code}: ${error.message}`;
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY); // refused: it would only be refused again
      if (response.status === 403) {
        throw new TokenRefused(`This token may not use the study (${said}). Paste a token with the 'recommend' scope.`);
      }
      throw new TokenRefused(token
        ? `The gateway does not accept this token (${said}). Paste a valid token with the 'recommend' scope.`
        : `This gateway needs an access token (${said}). Paste a token with the 'recommend' scope.`);
    }
    throw new Error(said);
  }
  if (!json) {
    throw new Error(`HTTP ${response.status}: expected JSON, got ${response.headers.get("content-type") || "no content type"}`);
  }
  return data;
}

// Runs one of the page's calls and shows why it failed; one refused for want of a token is kept to be made again.
async function attempt(action, onFailure = () => {}) {
  try {
    await action();
  } catch (error) {
    onFailure();
    showError(error.message);
    if (error instanceof TokenRefused) {
      refused.push([action, onFailure]);
      askForToken();
    }
  }
}

async function useToken(event) {
  event.preventDefault();
  const token = $("token").value.trim().replace(/^bearer\s+/i, "");
  if (!TOKEN_SHAPE.test(token)) {
    showError("A token is one word of visible ASCII characters, as it is in its file: paste it again.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-form").hidden = true;
  showTokenState();
  showError("");
  const again = refused;
  refused = [];
  for (const [action, onFailure] of again) await attempt(action, onFailure); // in order: the last mark of an item wins
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken();
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
  li.append(title);
  if (!comparison.blind) {  // blind: no score either, since the two paths score on different scales
    const explain = document.createElement("div");
    explain.className = "explain";
    explain.textContent = `score ${fmt(item.score)} · query match ${fmt(item.query_match)} · personal affinity ${fmt(item.personal_affinity)}`;
    li.append(explain);
  }
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

function judge(comparison, list, item, relevant, li) {
  const mark = { position: list.position, rank: item.rank, relevant };
  return attempt(async () => {
    const stored = await call("PUT", `/v1/study/comparisons/${comparison.comparison_id}/judgements`, mark);
    item.relevant = stored.relevant;
    markItem(li, stored.relevant);
    showError("");
  });
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

function ask(event) {
  event.preventDefault();
  showError("");
  const body = {
    user_id: $("user").value.trim(),
    query: $("query").value,
    top_k: Number($("top_k").value),
    recent_item_ids: $("recent").value.split(",").map((id) => id.trim()).filter(Boolean),
  };
  return attempt(async () => {
    const comparison = await call("POST", "/v1/study/comparisons", body);
    // The comparison id in the address lets a reload show the same lists with their judgements.
    history.replaceState(null, "", `?comparison=${comparison.comparison_id}`);
    render(comparison);
  }, clearComparison);
}

async function loadUsers() {
  const { users } = await call("GET", "/v1/study/users");
  $("users").replaceChildren(...users.map((user) => Object.assign(document.createElement("option"), { value: user })));
}

async function loadComparison(id) {
  const comparison = await call("GET", `/v1/study/comparisons/${encodeURIComponent(id)}`);
  $("user").value = comparison.user_id;
  $("query").value = comparison.query;
  render(comparison);
}

async function start() {
  $("ask").addEventListener("submit", ask);
  $("token-form").addEventListener("submit", useToken);
  $("forget-token").addEventListener("click", forgetToken);
  showTokenState();
  await attempt(loadUsers);
  const id = new URLSearchParams(location.search).get("comparison");
  if (id) await attempt(() => loadComparison(id));
}

start();

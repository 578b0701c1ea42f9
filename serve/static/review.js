// The review page: sign in with a reviewer key, then work through the queue one item at a time.
// Plain DOM, no framework, no build step. Text from the server is only ever set as textContent.
"use strict";

const ASPECTS = [
  ["accuracy", "Accuracy", "Is it correct?"],
  ["relevance", "Relevance", "Does it answer this question?"],
  ["clarity", "Clarity", "Is it clear and well written?"],
  ["helpfulness", "Helpfulness", "Would it help the person asking?"],
];
const KEY_STORE = "rlhf-review-key";
const $ = (id) => document.getElementById(id);
const state = { key: "", reviewer: "", items: [], done: 0, left: 0, active: 0, busy: false };

// ------------------------------------------------------------------ server

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" };
  const resp = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON: reported below */ }
  if (!resp.ok) {
    const err = new Error((body && body.error && body.error.message) || `request failed (HTTP ${resp.status})`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

async function load() {
  const data = await api("/review/items?limit=200");
  Object.assign(state, { reviewer: data.reviewer, items: data.items, done: data.done, left: data.left });
  $("reviewer-name").textContent = data.reviewer;
  $("who").hidden = false;
  $("progress-box").hidden = false;
  render();
}

// ------------------------------------------------------------------ views

function say(text) { $("message").textContent = text; }
function fail(text) { $("error").textContent = text; }
function show(view) { for (const id of ["login", "review", "empty"]) $(id).hidden = id !== view; }

function progress() {
  $("progress").max = Math.max(state.done + state.left, 1);
  $("progress").value = state.done;
  $("progress-text").textContent = `${state.done} done, ${state.left} left`;
}

function render() {
  progress();
  const item = state.items[0];
  if (!item) { show("empty"); return; }
  const form = $("review");
  form.reset();
  form.dataset.kind = item.kind;
  form.dataset.item = item.id;
  $("item-title").textContent = item.kind === "rate" ? "Rate the answer" : "Compare two answers";
  $("question").textContent = item.question;
  $("rate").hidden = item.kind !== "rate";
  $("compare").hidden = item.kind !== "compare";
  if (item.kind === "rate") {
    $("answer").textContent = item.answers[0].text;
    setActive(0);
  } else {
    item.answers.forEach((a, i) => { $(`answer-${i}`).textContent = a.text; $(`pick-${i}`).value = a.id; });
  }
  show("review");
}

function buildAspects() {
  ASPECTS.forEach(([name, label, hint], i) => {
    const set = document.createElement("fieldset");
    set.className = "aspect";
    set.dataset.aspect = name;
    const legend = document.createElement("legend");
    const help = Object.assign(document.createElement("span"), { className: "hint", textContent: ` ${hint}` });
    legend.append(label, help);
    set.append(legend);
    for (let v = 1; v <= 5; v++) {
      const input = Object.assign(document.createElement("input"),
        { type: "radio", name, value: String(v), id: `${name}-${v}` });
      const score = Object.assign(document.createElement("label"), { htmlFor: input.id, className: "score" });
      score.append(input, String(v));
      set.append(score);
    }
    set.addEventListener("focusin", () => setActive(i));
    $("aspects").append(set);
  });
}

function setActive(i) {
  state.active = Math.max(0, Math.min(ASPECTS.length - 1, i));
  document.querySelectorAll("fieldset.aspect").forEach((set, j) => set.classList.toggle("active", j === state.active));
}

// ------------------------------------------------------------------ actions

function rate(value) {
  const [name, label] = ASPECTS[state.active];
  $(`${name}-${value}`).checked = true;
  say(`${label}: ${value}`);
  setActive(state.active + 1);
}

function pick(i) {
  $(`pick-${i}`).checked = true;
  say(`Answer ${"AB"[i]} is better`);
}

function skip() {
  if (state.items.length > 1) state.items.push(state.items.shift());
  fail("");
  say("Skipped; it comes back after the others.");
  render();
  $("item-title").focus();
}

function reviewBody(item) {
  const body = {};
  if (item.kind === "rate") {
    const ratings = {};
    const missing = [];
    for (const [name, label] of ASPECTS) {
      const checked = document.querySelector(`input[name="${name}"]:checked`);
      if (checked) ratings[name] = Number(checked.value); else missing.push(label);
    }
    if (missing.length) throw new Error(`Rate every aspect first (${missing.join(", ")} missing).`);
    body.ratings = ratings;
  } else {
    const checked = document.querySelector('input[name="preferred"]:checked');
    if (!checked) throw new Error("Pick the better answer first (A or B).");
    body.preferred = checked.value;
  }
  const correction = $("correction").value.trim();
  const comment = $("comment").value.trim();
  if (correction) body.correction = correction;
  if (comment) body.comment = comment;
  return body;
}

async function submit() {
  const item = state.items[0];
  if (state.busy || !item) return; // one request at a time: a second press is not a second review
  fail("");
  let body;
  try { body = reviewBody(item); } catch (e) { fail(e.message); return; }
  state.busy = true;
  $("submit").disabled = true;
  try {
    const path = `/review/items/${encodeURIComponent(item.id)}`;
    const saved = await api(path, { method: "POST", body: JSON.stringify(body) });
    state.items.shift();
    Object.assign(state, { done: saved.done, left: saved.left });
    say("Saved.");
    if (!state.items.length && state.left) await load(); else render();
    $("item-title").focus();
  } catch (e) {
    if (e.status === 401 || e.status === 403) signOut(e.message);
    else if (e.status === 404 || e.status === 409) { await load(); fail(`${e.message} Showing the next item.`); }
    else fail(e.message);
  } finally {
    state.busy = false;
    $("submit").disabled = false;
  }
}

async function signIn(key) {
  state.key = key;
  fail("");
  try {
    await load();
    sessionStorage.setItem(KEY_STORE, key);
    say(`Signed in as ${state.reviewer}.`);
    if (!$("review").hidden) $("item-title").focus();
  } catch (e) {
    signOut(e.status === 401 || e.status === 403 ? e.message : `Could not load the queue: ${e.message}`);
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  Object.assign(state, { key: "", items: [] });
  $("who").hidden = true;
  $("progress-box").hidden = true;
  show("login");
  say("");
  fail(message || "");
  $("key").value = "";
  $("key").focus();
}

// ------------------------------------------------------------------ keyboard

function onKey(e) {
  if ($("review").hidden) return;
  const typing = e.target.matches("textarea, input[type=password], input[type=text]");
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); return; }
  if (typing) { if (e.key === "Escape") e.target.blur(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const kind = $("review").dataset.kind;
  const key = e.key.toLowerCase();
  const actions = {
    e: () => $("correction").focus(),
    c: () => $("comment").focus(),
    s: skip,
    "?": () => { $("help").open = !$("help").open; },
  };
  if (kind === "rate" && /^[1-5]$/.test(key)) rate(Number(key));
  else if (kind === "rate" && (key === "j" || key === "k")) setActive(state.active + (key === "j" ? 1 : -1));
  else if (kind === "compare" && (key === "a" || key === "b")) pick(key === "a" ? 0 : 1);
  else if (actions[key]) actions[key]();
  else if (key === "enter" && !e.target.matches("button, summary, a")) submit();
  else return;
  e.preventDefault();
}

function init() {
  buildAspects();
  const token = new URLSearchParams(location.search).get("token");
  if (token) history.replaceState(null, "", location.pathname); // a key must not stay in the address bar
  $("login").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("review").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("skip").addEventListener("click", skip);
  $("sign-out").addEventListener("click", () => signOut(""));
  document.addEventListener("keydown", onKey);
  const key = token || sessionStorage.getItem(KEY_STORE);
  if (key) signIn(key); else show("login");
}

init();

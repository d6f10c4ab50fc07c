// consentd's dashboard: recent calls, each call's timeline, the agents; live by
// server-sent events. Plain DOM; every value from the API goes in as text, never as
// markup (caller ids are whatever a caller sends). The API token lives in this tab's
// sessionStorage and travels only in the Authorization header.
"use strict";

const TOKEN_KEY = "consentd.api_token";
const LANES = ["call", "recording"];
const KINDS = {
  call: ["greeting", "ivr", "queue", "ringing", "talking", "voicemail", "hold"],
  recording: ["recorded", "paused", "not_recorded"],
};
const OUTCOME_LABELS = {
  caller_opted_in: "opted in",
  caller_opted_out: "opted out",
  caller_withdrew: "withdrew",
  notice_failed: "notice failed",
  no_decision: "no decision",
};

const state = { calls: [], selected: null, view: null, refreshTimer: null, stream: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "style") Object.assign(node.style, value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const token = () => sessionStorage.getItem(TOKEN_KEY);

class Unauthorized extends Error {}

async function api(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value) url.searchParams.set(name, value);
  }
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token()}` },
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  return body;
}

// ------------------------------------------------------------------ time

const seconds = (iso) => Date.parse(iso) / 1000;

function clock(iso) {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

function mmss(s) {
  const whole = Math.round(s);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

const outcomeOf = (call) => call.call_recording_consent_action || "no_decision";
const agentOf = (call) => call.agent_name ?? call.agent ?? null;

// ------------------------------------------------------------------ timeline

// The recording lane from what every call carries (its kept recorded spans), with the
// agents' pauses from its ledger rows when they are at hand: for a call whose
// `timeline` the API does not serve.
function recordingLane(call, events, until) {
  const start = seconds(call.started_at);
  const end = call.ended_at ? seconds(call.ended_at) : until;
  const recorded = (call.recording_segments || [])
    .map((s) => [seconds(s.start) - start, seconds(s.end) - start])
    .sort((a, b) => a[0] - b[0]);
  const pauses = [];
  let pausedAt = null;
  for (const e of events || []) {
    if (e.kind === "recording_paused" && pausedAt === null) pausedAt = seconds(e.occurred_at) - start;
    if (e.kind === "recording_resumed" && pausedAt !== null) {
      pauses.push([pausedAt, seconds(e.occurred_at) - start]);
      pausedAt = null;
    }
  }
  if (pausedAt !== null) pauses.push([pausedAt, end - start]);
  const spans = [];
  const gap = (from, to) => {
    // A gap is "paused" where a pause covers it, else "not recorded".
    let at = from;
    for (const [p0, p1] of pauses) {
      const a = Math.max(p0, at);
      const b = Math.min(p1, to);
      if (b <= a) continue;
      if (a > at) spans.push(span("not_recorded", at, a));
      spans.push(span("paused", a, b));
      at = b;
    }
    if (to > at) spans.push(span("not_recorded", at, to));
  };
  const span = (kind, s0, s1) => ({ lane: "recording", kind, start_s: s0, end_s: s1 });
  let at = 0;
  for (const [s0, s1] of recorded) {
    if (s0 > at) gap(at, s0);
    spans.push(span("recorded", Math.max(s0, at), s1));
    at = Math.max(at, s1);
  }
  if (end - start > at) gap(at, end - start);
  return spans;
}

// The API's timeline; where it has no recording lane (an older daemon serves none), the
// recording lane drawn from the call's recorded spans and pauses.
function timelineOf(view, until) {
  const spans = Array.isArray(view.timeline) ? view.timeline : [];
  if (spans.some((s) => s.lane === "recording")) return spans;
  return [...spans, ...recordingLane(view.call, view.events, until)];
}

function callLength(call, spans, until) {
  const end = call.ended_at ? seconds(call.ended_at) : until;
  const length = Math.max(0, end - seconds(call.started_at));
  return Math.max(length, ...spans.map((s) => s.end_s), 0.001);
}

function spanTitle(s) {
  const kind = s.kind.replace("_", " ") + (s.cut_short ? " (cut short by key 3)" : "");
  return `${kind}: ${mmss(s.start_s)} to ${mmss(s.end_s)} (${(s.end_s - s.start_s).toFixed(1)} s)`;
}

function spanNode(s, length, labelled) {
  const left = (100 * s.start_s) / length;
  const width = (100 * (s.end_s - s.start_s)) / length;
  return el(
    "div",
    {
      class: `span k-${s.kind}${s.cut_short ? " cut-short" : ""}`,
      "data-lane": s.lane,
      "data-kind": s.kind,
      "data-start-s": s.start_s.toFixed(3),
      "data-end-s": s.end_s.toFixed(3),
      title: spanTitle(s),
      style: { left: `${left}%`, width: `${width}%` },
    },
    labelled && width > 8 ? s.kind.replace("_", " ") : null,
  );
}

function miniBar(call, until) {
  const spans = recordingLane(call, null, until);
  const length = callLength(call, spans, until);
  return el(
    "div",
    { class: "bar mini", "data-length-s": length.toFixed(3) },
    ...spans.map((s) => spanNode(s, length, false)),
  );
}

function drawTimeline(view, until) {
  const spans = timelineOf(view, until);
  const length = callLength(view.call, spans, until);
  const box = $("timeline");
  box.replaceChildren();
  box.dataset.lengthS = length.toFixed(3);
  for (const lane of LANES) {
    const laneSpans = spans.filter((s) => s.lane === lane);
    if (!laneSpans.length) continue;
    box.append(
      el(
        "div",
        { class: "lane-row" },
        el("span", { class: "lane-name", text: lane }),
        el(
          "div",
          { class: "lane", "data-lane": lane },
          ...laneSpans.map((s) => spanNode(s, length, true)),
        ),
      ),
    );
  }
  const axis = el("div", { class: "axis" });
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((n) => length / n <= 12) || 1200;
  for (let t = 0; t <= length + 1e-6; t += step) {
    axis.append(el("span", { style: { left: `${(100 * t) / length}%` }, text: mmss(t) }));
  }
  box.append(axis);
  const legend = $("legend");
  legend.replaceChildren();
  const shown = new Set(spans.map((s) => s.kind));
  for (const lane of LANES) {
    for (const kind of KINDS[lane]) {
      if (shown.has(kind)) legend.append(el("span", {}, el("i", { class: `k-${kind}` }), kind.replace("_", " ")));
    }
  }
  const rows = $("spans").tBodies[0];
  rows.replaceChildren(
    ...spans.filter((s) => s.end_s - s.start_s >= 0.05).map((s) =>
      el(
        "tr",
        { "data-lane": s.lane, "data-kind": s.kind },
        el("td", { text: s.lane }),
        el("td", { text: s.kind.replace("_", " ") + (s.cut_short ? " (cut short)" : "") }),
        el("td", { class: "num", text: mmss(s.start_s) }),
        el("td", { class: "num", text: mmss(s.end_s) }),
        el("td", { class: "num", text: (s.end_s - s.start_s).toFixed(1) }),
      ),
    ),
  );
}

// ------------------------------------------------------------------ the calls

function filters() {
  return {
    number: $("f-number").value.trim(),
    outcome: $("f-outcome").value,
    agent: $("f-agent").value.trim(),
  };
}

function drawCalls(calls) {
  const now = Date.now() / 1000;
  const rows = calls.map((call) => {
    const outcome = outcomeOf(call);
    const live = !call.ended_at;
    const row = el(
      "tr",
      {
        class: `call${live ? " in-progress" : ""}${call.call_id === state.selected ? " selected" : ""}`,
        "data-call-id": call.call_id,
        "data-id": call.id,
        "data-caller": call.caller,
        "data-number": call.phone_number,
        "data-outcome": outcome,
      },
      el("td", { text: clock(call.started_at) }),
      el("td", { class: "number", text: call.phone_number || "", title: call.phone_number }),
      el("td", { class: "caller", text: call.caller || "", title: call.caller }),
      el("td", { class: "policy", text: call.call_recording_consent || "" }),
      el("td", {}, el("span", { class: `outcome ${outcome}`, text: OUTCOME_LABELS[outcome] })),
      el("td", { class: "agent", text: agentOf(call) || "", title: agentOf(call) }),
      el("td", { class: "num", text: call.duration === null ? "" : `${call.duration} s` }),
      el("td", { class: "num recorded", text: `${call.recording_time} s` }),
      el("td", { class: "num", text: `${call.not_recording_time} s` }),
      el("td", { class: "status", text: live ? "in progress" : call.completion_status || "ended" }),
      el("td", {}, miniBar(call, now)),
    );
    row.addEventListener("click", () => select(call.call_id));
    return row;
  });
  $("calls").tBodies[0].replaceChildren(...rows);
  const live = calls.filter((c) => !c.ended_at).length;
  $("calls-status").textContent = `${calls.length} call${calls.length === 1 ? "" : "s"}${live ? `, ${live} in progress` : ""}`;
}

function drawAgents(report) {
  const names = $("agent-names");
  names.replaceChildren(...report.agents.map((a) => el("option", { value: a.agent })));
  $("agents").tBodies[0].replaceChildren(
    ...report.agents.map((a) =>
      el(
        "tr",
        { "data-agent": a.agent },
        el("td", { text: a.agent }),
        ...[
          a.calls_answered,
          a.calls_placed,
          a.recording_control_interactions,
          `${a.recording_time} s`,
          `${a.not_recording_time} s`,
          a.consent_outcomes.caller_opted_in,
          a.consent_outcomes.caller_opted_out,
          a.consent_outcomes.caller_withdrew,
          a.consent_outcomes.notice_failed,
          a.consent_outcomes.no_decision,
        ].map((v) => el("td", { class: "num", text: v })),
      ),
    ),
  );
}

async function loadDetail() {
  if (!state.selected) return;
  const view = await api(`/api/calls/${encodeURIComponent(state.selected)}`);
  state.view = view;
  const call = view.call;
  $("detail-title").textContent = `${call.phone_number || ""} from ${call.caller || "unknown"}`;
  $("detail-facts").textContent = [
    `started ${clock(call.started_at)}`,
    call.ended_at ? `ended ${clock(call.ended_at)}` : "in progress",
    `policy ${call.call_recording_consent}`,
    `outcome ${OUTCOME_LABELS[outcomeOf(call)]}`,
    agentOf(call) ? `agent ${agentOf(call)}` : null,
    `recorded ${call.recording_time} s, not recorded ${call.not_recording_time} s`,
    `id ${call.call_id}`,
  ]
    .filter(Boolean)
    .join(" · ");
  drawTimeline(view, Date.now() / 1000);
  $("detail").hidden = false;
}

async function select(callId) {
  state.selected = callId;
  for (const row of $("calls").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.callId === callId);
  }
  await guarded(loadDetail);
}

// Runs `load` one at a time. Asking while it runs asks for one more run after it, at
// least `gapMs` after the last one began. A slow load is never thrown away for a newer
// one: on a busy ledger, where a load takes longer than the gap between ledger changes,
// that kept the list from ever being drawn.
function coalesced(load, gapMs) {
  let running = false;
  let again = false;
  let last = 0;
  return async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        const wait = last + gapMs - Date.now();
        if (wait > 0) await sleep(wait);
        last = Date.now();
        await guarded(load);
      } while (again && token());
    } finally {
      running = false;
    }
  };
}

async function loadCalls() {
  const asked = JSON.stringify(filters());
  const list = await api("/api/calls", { limit: "50", ...filters() });
  if (asked !== JSON.stringify(filters())) return; // typed meanwhile: that asked again
  state.calls = list.calls;
  drawCalls(list.calls);
  await loadDetail();
  $("error").textContent = "";
}

// The agents' table sums a whole day of calls (seconds on a busy day): its own loads,
// at most one every AGENTS_GAP_MS, so the calls never wait for it.
const AGENTS_GAP_MS = 15000;

async function loadAgents() {
  drawAgents(await api("/api/reports/agents"));
}

const refreshCalls = coalesced(loadCalls, 0);
const refreshAgents = coalesced(loadAgents, AGENTS_GAP_MS);

function refresh() {
  refreshCalls();
  refreshAgents();
}

async function guarded(action) {
  try {
    await action();
  } catch (error) {
    if (error instanceof Unauthorized) forget("The daemon refused the token.");
    else $("error").textContent = `Could not load: ${error.message}`;
  }
}

// Several changes at once (a burst of ledger rows, typing) load once.
function scheduleRefresh(delay = 150) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, delay);
}

// ------------------------------------------------------------------ live updates

function setLive(on) {
  const live = $("live");
  live.className = `live ${on ? "on" : "off"}`;
  live.textContent = on ? "live" : "offline";
}

// Server-sent events read with fetch(): EventSource cannot send the Authorization header.
async function listen() {
  while (token()) {
    const abort = new AbortController();
    state.stream = abort;
    try {
      const response = await fetch("/api/events", {
        headers: { Authorization: `Bearer ${token()}` },
        cache: "no-store",
        signal: abort.signal,
      });
      if (response.status === 401) {
        forget("The daemon refused the token.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = block.split("\n").find((line) => line.startsWith("event:"));
          const name = event ? event.slice(6).trim() : "message";
          if (name === "ready" || name === "calls") scheduleRefresh();
        }
      }
    } catch (error) {
      if (abort.signal.aborted) return;
    }
    setLive(false);
    await sleep(2000);
  }
}

// Calls in progress grow while no ledger row is written (talking): redraw them.
setInterval(() => {
  if (token() && state.calls.some((c) => !c.ended_at)) scheduleRefresh(0);
}, 2000);

// ------------------------------------------------------------------ the token

function forget(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  setLive(false);
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function openBoard() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  refresh();
  listen();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    openBoard();
  });
  $("logout").addEventListener("click", () => forget(""));
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["f-number", "f-agent"]) $(id).addEventListener("input", () => scheduleRefresh(250));
  $("f-outcome").addEventListener("change", () => scheduleRefresh(0));
  $("detail-close").addEventListener("click", () => {
    state.selected = null;
    state.view = null;
    $("detail").hidden = true;
    for (const row of $("calls").tBodies[0].rows) row.classList.remove("selected");
  });
  if (token()) openBoard();
  else forget("");
});

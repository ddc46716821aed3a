// The admin page: XRPC calls with a service-auth JWT per method, live updates over SSE.
"use strict";

const M = {
  trigger: "pub.chive.admin.triggerBackfill",
  status: "pub.chive.admin.getBackfillStatus",
  history: "pub.chive.admin.getBackfillHistory",
  cancel: "pub.chive.admin.cancelBackfill",
};
const PAGE = Number(new URLSearchParams(location.search).get("pageSize")) || 20;
let pasted = null; // a pasted token, used for every method
let local = false; // tokens minted by the local admin key
const running = new Map(); // id -> operation view
const finished = new Set(); // ids seen finished: a late answer must not bring one back
let reload = null;
const history = { cursors: [undefined], index: 0, next: null };
let source = null;

async function token(lxm) {
  if (pasted) return pasted;
  if (!local) throw { error: "AuthenticationRequired", message: "Sign in first" };
  const r = await fetch("/admin/backfill/token", { method: "POST", body: JSON.stringify({ lxm }) });
  const body = await r.json();
  if (!r.ok) throw body;
  return body.token;
}

async function xrpc(method, { params, body } = {}) {
  const headers = { authorization: "Bearer " + (await token(method)) };
  let url = "/xrpc/" + method;
  if (params) url += "?" + new URLSearchParams(params);
  const init = body ? { method: "POST", headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify(body) } : { headers };
  const r = await fetch(url, init);
  const data = await r.json();
  if (!r.ok) throw data;
  return data;
}

function text(value) { return value === undefined || value === null ? "" : String(value); }
function seconds(from, to) {
  const s = Math.max(0, Math.round(((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000));
  return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}
function records(op) {
  return op.recordsProcessed + " records" + (op.progress !== undefined ? " (" + op.progress + "%)" : "");
}

function progressBar(op) {
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", op.type + " " + op.id);
  if (op.progress !== undefined) bar.setAttribute("aria-valuenow", String(op.progress));
  const fill = document.createElement("div");
  fill.style.width = (op.progress || 0) + "%";
  bar.append(fill);
  return bar;
}

function renderRunning() {
  const body = document.querySelector("#running tbody");
  body.replaceChildren();
  for (const op of running.values()) {
    const row = body.insertRow();
    row.dataset.id = op.id;
    row.insertCell().textContent = op.type;
    const status = row.insertCell();
    status.textContent = op.status + (op.cancelRequested ? " (cancelling)" : "");
    if (op.stalled) {
      const mark = document.createElement("span");
      mark.className = "stalled";
      mark.textContent = " stalled";
      status.append(mark);
    }
    row.insertCell().append(progressBar(op));
    row.insertCell().textContent = records(op);
    row.insertCell().textContent = seconds(op.startedAt);
    const cancel = document.createElement("button");
    cancel.textContent = "Cancel";
    cancel.disabled = Boolean(op.cancelRequested);
    cancel.onclick = async () => {
      cancel.disabled = true;
      try { await xrpc(M.cancel, { body: { id: op.id } }); } catch (e) { cancel.disabled = false; alert(e.error + ": " + e.message); }
    };
    row.insertCell().append(cancel);
  }
  document.querySelector("#running-empty").hidden = running.size > 0;
}

async function loadHistory() {
  const params = { limit: PAGE };
  const cursor = history.cursors[history.index];
  if (cursor) params.cursor = cursor;
  const page = await xrpc(M.history, { params });
  history.next = page.cursor || null;
  const body = document.querySelector("#history tbody");
  body.replaceChildren();
  for (const op of page.operations) {
    const row = body.insertRow();
    row.dataset.id = op.id;
    row.className = op.status;
    for (const value of [op.type, op.status, op.startedAt, op.completedAt ? seconds(op.startedAt, op.completedAt) : ""]) {
      row.insertCell().textContent = text(value);
    }
    row.insertCell().append(progressBar(op));
    row.insertCell().textContent = records(op);
    row.insertCell().textContent = text(op.error);
  }
  document.querySelector("#older").disabled = !history.next;
  document.querySelector("#newer").disabled = history.index === 0;
}

function follow() {
  if (source) source.close();
  token(M.status).then((t) => {
    source = new EventSource("/admin/backfill/stream?token=" + encodeURIComponent(t));
    source.addEventListener("operation", (e) => {
      const op = JSON.parse(e.data);
      if (op.status === "running") {
        if (!finished.has(op.id)) running.set(op.id, op);
      } else {
        finished.add(op.id);
        running.delete(op.id);
        // The newest history page shows it: reload once for a burst of endings.
        if (history.index === 0 && reload === null) {
          reload = setTimeout(() => { reload = null; loadHistory().catch(() => {}); }, 100);
        }
      }
      renderRunning();
    });
    // Tokens are short-lived: a dropped stream reconnects with a fresh one.
    source.onerror = () => { source.close(); setTimeout(follow, 2000); };
  }).catch(() => {});
}

async function signedIn(how) {
  document.querySelector("#auth-state").textContent = "signed in (" + how + ")";
  running.clear();
  const listed = await xrpc(M.status, { params: { status: "running", limit: 100 } });
  for (const op of listed.operations) running.set(op.id, op);
  renderRunning();
  await loadHistory();
  follow();
}

document.querySelector("#use-local").onclick = async () => {
  local = true; pasted = null;
  try { await signedIn("local admin key"); } catch (e) { document.querySelector("#auth-state").textContent = e.error + ": " + e.message; }
};
document.querySelector("#use-token").onclick = async () => {
  pasted = document.querySelector("#token").value.trim(); local = false;
  try { await signedIn("token"); } catch (e) { document.querySelector("#auth-state").textContent = e.error + ": " + e.message; }
};
document.querySelector("#older").onclick = () => { history.cursors[++history.index] = history.next; loadHistory(); };
document.querySelector("#newer").onclick = () => { history.index = Math.max(0, history.index - 1); loadHistory(); };

const form = document.querySelector("#trigger");
function showFields() {
  const type = form.elements.type.value;
  for (const label of form.querySelectorAll("label[data-for]")) label.hidden = label.dataset.for !== type;
}
form.elements.type.onchange = showFields;
showFields();
form.onsubmit = async (event) => {
  event.preventDefault();
  const out = document.querySelector("#trigger-result");
  const type = form.elements.type.value;
  const body = { type };
  for (const label of form.querySelectorAll("label[data-for='" + type + "'] input")) {
    if (label.value) body[label.name] = label.type === "number" ? Number(label.value) : label.value;
  }
  try {
    const { operation } = await xrpc(M.trigger, { body });
    out.className = "ok";
    out.textContent = "Started " + operation.type + " " + operation.id;
    if (operation.status === "running" && !finished.has(operation.id)) {
      running.set(operation.id, operation);
      renderRunning();
    }
  } catch (e) {
    out.className = "error";
    out.textContent = e.error + ": " + e.message;
  }
};
// Elapsed times move on between events.
setInterval(() => { if (running.size) renderRunning(); }, 1000);

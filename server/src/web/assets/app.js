// The dashboard: what a race engineer leaves on a pit-wall screen. Live results and traces come
// over one stream (live.js); the page keeps them keyed (a lap is session|car|lap), so a
// reconnect or a restarted server never shows a row twice; charts are uPlot (charts.js).
import { api, Live } from "./live.js";
import { AnomalyChart, carColour, TimeChart, TrackMap, Traces } from "./charts.js";

const $ = (sel) => document.querySelector(sel);
const TRACES = "_traces";
const TRACE_WINDOW_MS = 90_000;
const MAX_ROWS_SHOWN = 300;
const GENERIC_ROWS = 500;

/** Results of one session (live or archived), keyed so that nothing counts twice. */
class Store {
  constructor() {
    this.laps = new Map(); // session|driver|lap -> lap_stats row
    this.scores = new Map(); // session|driver|lap -> lap_anomaly row
    this.events = new Map(); // kind|session|driver|lap -> {kind, session, driver, lap, t, n, peak}
    this.alerts = new Map(); // session|driver|kind|ts -> alerts row
    this.generic = new Map(); // query -> newest rows
    this.sessions = new Map(); // session -> newest event time seen
  }

  seen(session, t) {
    if (session && !(this.sessions.get(session) >= t)) this.sessions.set(session, t || 0);
  }

  /** The session shown: the one with the newest data. */
  current() {
    let best = null;
    let bt = -Infinity;
    for (const [s, t] of this.sessions) if (t > bt) { best = s; bt = t; }
    return best;
  }

  add(q, rows) {
    const key = (r) => `${r.session}|${r.driver}|${r.lap}`;
    if (q === "lap_stats") {
      for (const r of rows) { this.laps.set(key(r), r); this.seen(r.session, Date.parse(r.last_sample)); }
    } else if (q === "lap_anomaly") {
      for (const r of rows) this.scores.set(key(r), r);
    } else if (q === "alerts") {
      for (const r of rows) this.alerts.set(`${r.session}|${r.driver}|${r.kind}|${r.ts}`, r);
    } else if (q === "over_rev" || q === "lock_up") {
      const value = q === "over_rev" ? "rpm" : "decel_g";
      for (const r of rows) {
        const k = `${q}|${key(r)}`;
        const t = Date.parse(r.ts);
        const e = this.events.get(k) || { kind: q, session: r.session, driver: r.driver, lap: r.lap, t, n: 0, peak: -Infinity };
        e.n += 1;
        e.t = Math.min(e.t, t);
        e.peak = Math.max(e.peak, r[value] ?? -Infinity);
        this.events.set(k, e);
      }
    }
    const kept = this.generic.get(q) || [];
    kept.push(...rows);
    if (kept.length > GENERIC_ROWS) kept.splice(0, kept.length - GENERIC_ROWS);
    this.generic.set(q, kept);
  }
}

const S = {
  queries: [],
  live: new Store(),
  archived: null, // {name, store}
  traces: new Map(), // driver -> rows {session, t, speed, rpm, throttle, brake, gear, x, y}
  cars: new Set(),
  selected: [],
  threshold: 0,
  serverThreshold: null,
  wm: null,
  hasXY: false,
  outlineCar: null,
  tab: "race",
  query: null,
};

const store = () => (S.archived ? S.archived.store : S.live);
window.pitwall = S; // for the browser console (and the tests)

// ---- URL state: a screen can be left on a car, a session, a query ----
function readUrl() {
  const u = new URL(location.href);
  S.selected = (u.searchParams.get("cars") || "").split(",").filter(Boolean);
  S.tab = u.searchParams.get("tab") || "race";
  S.query = u.searchParams.get("query");
  return u.searchParams.get("session") || "";
}

function writeUrl() {
  const u = new URL(location.href);
  const set = (k, v) => (v ? u.searchParams.set(k, v) : u.searchParams.delete(k));
  set("cars", S.selected.join(","));
  set("session", S.archived?.name);
  set("tab", S.tab === "race" ? "" : S.tab);
  set("query", S.query);
  history.replaceState(null, "", u);
}

// ---- rendering, at most five times a second ----
let pending = null;
function schedule() {
  if (!pending) pending = setTimeout(() => { pending = null; render(); }, 200);
}

const fmt = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const clock = (t) => new Date(t).toISOString().slice(11, 19);
function lapTime(ms) {
  const m = Math.floor(ms / 60000);
  return `${m}:${((ms % 60000) / 1000).toFixed(3).padStart(6, "0")}`;
}

/** Lap rows of the shown session with their times (to the next lap's start when known). */
function lapsOf(st, session) {
  const byCar = new Map();
  for (const r of st.laps.values()) {
    if (r.session !== session) continue;
    if (!byCar.has(r.driver)) byCar.set(r.driver, []);
    byCar.get(r.driver).push(r);
  }
  const out = [];
  for (const laps of byCar.values()) {
    laps.sort((a, b) => a.lap - b.lap);
    laps.forEach((r, i) => {
      const start = Date.parse(r.lap_start);
      const next = laps[i + 1];
      const exact = next && next.lap === r.lap + 1;
      const ms = exact ? Date.parse(next.lap_start) - start : Date.parse(r.last_sample) - start;
      out.push({ ...r, start, ms, exact });
    });
  }
  return out;
}

function renderLaps(st, session) {
  const laps = lapsOf(st, session);
  const best = new Map();
  for (const l of laps) if (l.exact && !(best.get(l.driver) <= l.ms)) best.set(l.driver, l.ms);
  const fastest = Math.min(...best.values());
  const shown = laps
    .filter((l) => S.selected.length === 0 || S.selected.includes(l.driver))
    .sort((a, b) => b.start - a.start || a.driver.localeCompare(b.driver))
    .slice(0, MAX_ROWS_SHOWN);
  const body = $("#lap-table tbody");
  body.replaceChildren(...shown.map((l) => {
    const tr = document.createElement("tr");
    const k = `${l.session}|${l.driver}|${l.lap}`;
    const score = st.scores.get(k)?.anomaly_score;
    tr.dataset.key = k;
    tr.dataset.driver = l.driver;
    if (l.exact && l.ms === fastest) tr.className = "fastest";
    else if (l.exact && l.ms === best.get(l.driver)) tr.className = "best";
    if (score > S.threshold) tr.classList.add("flagged");
    const cells = [l.driver, l.lap, (l.exact ? "" : "≈") + lapTime(l.ms), fmt(l.mean_speed, 1),
      fmt(l.max_speed, 0), l.samples, fmt(score, 1)];
    tr.replaceChildren(...cells.map((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (i === 2 && !l.exact) td.className = "approx";
      return td;
    }));
    tr.firstChild.style.borderLeft = `3px solid ${carColour(l.driver)}`;
    return tr;
  }));
  if (shown.length === 0) {
    body.innerHTML = `<tr><td colspan="7" class="empty">no lap has closed yet</td></tr>`;
  }
}

function scoresOf(st, session) {
  return [...st.scores.values()].filter((r) => r.session === session && r.anomaly_score !== undefined);
}

/** The slider's range (up to past the highest score and the server's threshold), then value. */
function renderSlider(st, session) {
  const max = Math.max(0, ...scoresOf(st, session).map((r) => r.anomaly_score));
  const slider = $("#threshold");
  const top = Math.max(10, Math.ceil(Math.max(max * 1.1, (S.serverThreshold ?? 0) * 1.5, S.threshold)));
  if (Number(slider.max) !== top) slider.max = top;
  slider.value = S.threshold;
  $("#threshold-value").textContent = fmt(S.threshold, 1);
}

const anomalyChart = new AnomalyChart($("#anomaly-chart"));
function renderAnomaly(st, session) {
  const scores = scoresOf(st, session);
  const flagged = scores.filter((r) => r.anomaly_score > S.threshold).length;
  $("#flagged-count").textContent = flagged;
  const cars = [...new Set(scores.map((r) => r.driver))]
    .filter((c) => S.selected.length === 0 || S.selected.includes(c))
    .sort();
  const lapNums = [...new Set(scores.map((r) => r.lap))].sort((a, b) => a - b);
  const byCar = {};
  for (const c of cars) byCar[c] = lapNums.map(() => null);
  const idx = new Map(lapNums.map((l, i) => [l, i]));
  for (const r of scores) if (byCar[r.driver]) byCar[r.driver][idx.get(r.lap)] = r.anomaly_score;
  anomalyChart.draw(cars, lapNums, byCar, S.threshold);
}

/** What the alert list calls each kind; a kind of the user's own detectors shows as it is. */
const KIND_LABEL = {
  over_rev: "over-rev", lock_up: "lock-up", anomaly: "anomaly", flat_line: "flat-line", dropout: "dropout",
  spike: "spike", gearbox: "gearbox", power_loss: "power loss", drs_fault: "DRS fault", engine_off: "engine off",
};

/** The `alerts` stream and the laps over the slider; with the box ticked, also the over-rev and
 * lock-up events per lap of the `over_rev` and `lock_up` queries. */
function renderAlerts(st, session) {
  const routine = $("#alerts-routine").checked;
  const items = routine ? [...st.events.values()].filter((e) => e.session === session) : [];
  for (const r of st.alerts.values()) {
    if (r.session !== session) continue;
    items.push({ kind: r.kind, driver: r.driver, lap: r.lap, t: Date.parse(r.ts), severity: r.severity, text: r.detail });
  }
  for (const r of scoresOf(st, session)) {
    if (!(r.anomaly_score > S.threshold)) continue;
    const lap = st.laps.get(`${r.session}|${r.driver}|${r.lap}`);
    items.push({ kind: "anomaly", driver: r.driver, lap: r.lap, t: lap ? Date.parse(lap.last_sample) : 0, n: 1, peak: r.anomaly_score });
  }
  items.sort((a, b) => b.t - a.t);
  const detail = (e) => e.text !== undefined ? e.text ?? ""
    : e.kind === "over_rev" ? `${fmt(e.peak)} rpm ×${e.n}`
    : e.kind === "lock_up" ? `${fmt(e.peak, 1)} g ×${e.n}` : `score ${fmt(e.peak, 1)} > ${fmt(S.threshold, 1)}`;
  $("#alerts-count").textContent = items.length ? `· ${items.length}` : "";
  $("#alerts").replaceChildren(...items.slice(0, MAX_ROWS_SHOWN).map((e) => {
    const li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.driver = e.driver;
    if (e.severity) li.dataset.severity = e.severity;
    for (const [cls, text] of [["kind", KIND_LABEL[e.kind] ?? e.kind], ["car", e.driver], ["lap", `L${e.lap ?? "–"}`],
      ["detail", detail(e)], ["time", e.t ? clock(e.t) : ""]]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      if (cls === "detail") span.title = text;
      li.append(span);
    }
    return li;
  }));
}

const traces = new Traces($("#traces"));
const trackMap = new TrackMap($("#track-map"));
function renderTraces(session) {
  if (S.archived) {
    $("#traces-note").textContent = "live only";
    traces.draw([], { t: [] });
    return;
  }
  const cars = (S.selected.length ? S.selected : [...S.cars].sort().slice(0, 1)).filter((c) => S.traces.has(c));
  let newest = 0;
  for (const c of cars) newest = Math.max(newest, S.traces.get(c).at(-1)?.t ?? 0);
  const rows = Object.fromEntries(cars.map((c) => [c, S.traces.get(c).filter((r) => r.t >= newest - TRACE_WINDOW_MS && r.session === session)]));
  $("#traces-note").textContent = cars.length ? `${cars.join(", ")} · last ${TRACE_WINDOW_MS / 1000} s` : "no car selected";
  traces.draw(cars, rows);
  $("#map-panel").hidden = !S.hasXY;
  $("#race").classList.toggle("with-map", S.hasXY);
  if (S.hasXY) {
    const dots = [];
    for (const [driver, rs] of S.traces) {
      const r = rs.at(-1);
      if (r && r.session === session && r.x !== undefined && r.y !== undefined) dots.push({ driver, x: r.x, y: r.y });
    }
    trackMap.draw(dots, cars);
  }
}

function renderCars() {
  const root = $("#car-chips");
  const cars = [...S.cars].sort();
  if (root.childElementCount === cars.length && root.dataset.sel === S.selected.join()) return;
  root.dataset.sel = S.selected.join();
  root.replaceChildren(...cars.map((c) => {
    const b = document.createElement("span");
    b.className = "chip" + (S.selected.includes(c) ? " on" : "");
    b.dataset.driver = c;
    b.innerHTML = `<i style="background:${carColour(c)}"></i>`;
    b.append(c);
    b.onclick = () => {
      S.selected = S.selected.includes(c) ? S.selected.filter((x) => x !== c) : [...S.selected, c];
      writeUrl();
      render();
    };
    return b;
  }));
}

const genericChart = new TimeChart($("#generic-chart"));
function renderGeneric(st) {
  const q = S.queries.find((x) => x.name === S.query) || S.queries[0];
  if (!q) return;
  const sel = $("#query-select");
  if (sel.value !== q.name) sel.value = q.name;
  $("#query-info").textContent = `${q.kind} · reads ${q.input} · ${q.status} · ${q.rows_emitted} rows emitted`;
  const cols = q.columns.map((c) => c.name);
  const head = $("#generic-table thead");
  if (head.dataset.cols !== cols.join()) {
    head.dataset.cols = cols.join();
    const tr = document.createElement("tr");
    tr.replaceChildren(...cols.map((c) => Object.assign(document.createElement("th"), { textContent: c })));
    head.replaceChildren(tr);
  }
  const rows = (st.generic.get(q.name) || []).slice(-200).reverse();
  $("#generic-table tbody").replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.replaceChildren(...cols.map((c) => {
      const td = document.createElement("td");
      const v = r[c];
      td.textContent = v === undefined || v === null ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : String(v);
      return td;
    }));
    return tr;
  }));
  const time = q.columns.find((c) => c.type.startsWith("Timestamp"));
  const numeric = q.columns.filter((c) => /^(Float|Int|UInt)/.test(c.type) && c.name !== "lap").slice(0, 3).map((c) => c.name);
  if (!time || numeric.length === 0) { genericChart.clear(); return; }
  const sorted = [...(st.generic.get(q.name) || [])].map((r) => [Date.parse(r[time.name]) / 1000, r])
    .sort((a, b) => a[0] - b[0]);
  genericChart.draw(numeric, [sorted.map((x) => x[0]), ...numeric.map((n) => sorted.map((x) => x[1][n] ?? null))]);
}

function render() {
  const st = store();
  const session = S.archived ? S.archived.name : st.current();
  renderCars();
  $("#race").hidden = S.tab !== "race";
  $("#queries").hidden = S.tab !== "queries";
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === S.tab));
  renderSlider(st, session);
  if (S.tab === "race") {
    renderLaps(st, session);
    renderAnomaly(st, session);
    renderAlerts(st, session);
    renderTraces(session);
  } else {
    renderGeneric(st);
  }
}

// ---- live events ----
function addTraces(rows) {
  for (const r of rows) {
    const t = Date.parse(r.ts);
    S.cars.add(r.driver);
    S.live.seen(r.session, t);
    if (r.x !== undefined && r.y !== undefined) S.hasXY = true;
    let rs = S.traces.get(r.driver);
    if (!rs) S.traces.set(r.driver, (rs = []));
    const row = { session: r.session, t, speed: r.speed, rpm: r.rpm, throttle: r.throttle,
      brake: r.brake ? 1 : 0, gear: r.gear, x: r.x, y: r.y };
    if (rs.length && rs.at(-1).t >= t) {
      if (rs.some((x) => x.t === t)) continue;
      rs.push(row);
      rs.sort((a, b) => a.t - b.t);
    } else rs.push(row);
    // Keep twice the window; the oldest go in chunks.
    if (rs.length > 64 && t - rs[0].t > 2 * TRACE_WINDOW_MS) rs.splice(0, rs.findIndex((x) => t - x.t <= TRACE_WINDOW_MS));
  }
  // The outline of the track: the positions of the first car seen with any.
  const positioned = rows.filter((r) => r.x !== undefined && r.y !== undefined);
  if (!S.outlineCar && positioned.length) S.outlineCar = positioned[0].driver;
  trackMap.learn(positioned.filter((r) => r.driver === S.outlineCar).map((r) => [r.x, r.y, r.speed]));
}

function onEvent(kind, d) {
  if (kind === "rows") {
    if (d.q === TRACES) addTraces(d.rows);
    else {
      for (const r of d.rows) if (r.driver) S.cars.add(r.driver);
      S.live.add(d.q, d.rows);
    }
    schedule();
  } else if (kind === "tick") {
    S.wm = d.wm;
  } else if (kind === "gone") {
    refreshQueries();
  }
}

function onState(state, detail) {
  const el = $("#conn");
  el.dataset.state = state;
  if (state === "login") askToken();
  if (state === "reconnecting") el.textContent = `reconnecting… (${detail})`;
  if (state === "connecting") el.textContent = "connecting…";
}

const live = new Live(onEvent, onState);

// The age of the last message, four times a second.
setInterval(() => {
  const el = $("#conn");
  if (live.state !== "live") return;
  const age = (Date.now() - live.lastMessage) / 1000;
  el.dataset.state = age > 3 ? "stale" : "live";
  el.textContent = `${age > 3 ? "stale" : "live"} · ${age.toFixed(1)} s`;
}, 250);

// ---- queries, parameters, sessions ----
/** What the race view shows; the Queries tab adds the query it shows. */
const RACE_QUERIES = ["lap_stats", "lap_anomaly", "over_rev", "lock_up", "alerts"];

/** Streams only what the page shows (a pit screen on the race view takes no other rows). */
function followQueries() {
  const names = S.queries.map((q) => q.name);
  const shown = S.tab === "queries" ? S.query || names[0] : null;
  const want = names.filter((n) => RACE_QUERIES.includes(n) || n === shown).sort();
  if (want.join() !== live.queries.join()) live.follow(want);
}

async function refreshQueries() {
  const resp = await api("/api/queries");
  if (resp.status === 401) { askToken(); return false; }
  if (!resp.ok) return false;
  const body = await resp.json();
  const before = S.queries.map((q) => q.name).join();
  S.queries = body.queries;
  const names = S.queries.map((q) => q.name);
  if (names.join() !== before) {
    const sel = $("#query-select");
    sel.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n })));
  }
  followQueries();
  const t = Number(S.queries.find((q) => q.name === "lap_anomaly")?.params?.threshold);
  if (Number.isFinite(t) && t !== S.serverThreshold) {
    // Another screen (or `pitwall set`) stored a threshold: every screen follows it.
    S.serverThreshold = t;
    S.threshold = t;
    render();
  }
  schedule();
  return true;
}

async function refreshSessions() {
  const resp = await api("/api/sessions");
  if (!resp.ok) return;
  const { sessions } = await resp.json();
  const sel = $("#session-select");
  const current = sel.value;
  sel.replaceChildren(new Option("Live", ""), ...sessions.map((s) => new Option(s, s)));
  sel.value = sessions.includes(current) || current === "" ? current : "";
}

async function openSession(name) {
  if (!name) {
    S.archived = null;
  } else {
    const resp = await api(`/api/sessions/${encodeURIComponent(name)}`);
    if (!resp.ok) {
      $("#traces-note").textContent = (await resp.text()).trim();
      S.archived = null;
    } else {
      const data = await resp.json();
      const st = new Store();
      for (const [q, rows] of Object.entries(data)) {
        st.add(q, rows);
        for (const r of rows) if (r.driver) S.cars.add(r.driver);
      }
      S.archived = { name, store: st };
    }
  }
  writeUrl();
  render();
}

async function applyThreshold() {
  const msg = $("#threshold-msg");
  const resp = await api("/api/queries/lap_anomaly/params", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ threshold: S.threshold }),
  });
  msg.classList.toggle("error", !resp.ok);
  if (resp.status === 401) { askToken(); return; }
  if (!resp.ok) { msg.textContent = (await resp.text()).trim(); return; }
  S.serverThreshold = S.threshold;
  msg.textContent = `stored: every screen flags above ${fmt(S.threshold, 1)}`;
}

// ---- login ----
function askToken() {
  const d = $("#login");
  $("#conn").dataset.state = "login";
  $("#conn").textContent = "sign in";
  if (!d.open) d.showModal();
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem("pitwall-token", $("#login-token").value.trim());
  if (await refreshQueries()) {
    $("#login").close();
    refreshSessions();
  } else {
    $("#login-msg").textContent = "that token was refused";
  }
});

// ---- controls ----
$("#threshold").addEventListener("input", (e) => {
  S.threshold = Number(e.target.value);
  render();
});
$("#threshold-apply").addEventListener("click", applyThreshold);
$("#alerts-routine").addEventListener("change", render);
$("#session-select").addEventListener("change", (e) => openSession(e.target.value));
$("#session-select").addEventListener("focus", refreshSessions);
$("#query-select").addEventListener("change", (e) => {
  S.query = e.target.value;
  writeUrl();
  followQueries();
  render();
});
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  S.tab = b.dataset.tab;
  writeUrl();
  followQueries();
  render();
}));
$("#theme").addEventListener("click", () => {
  const light = document.documentElement.classList.toggle("light");
  localStorage.setItem("pitwall-theme", light ? "light" : "dark");
  location.reload(); // charts take their colours when built
});
if (localStorage.getItem("pitwall-theme") === "light") document.documentElement.classList.add("light");

// ---- start ----
(async () => {
  const session = readUrl();
  if (await refreshQueries()) {
    await refreshSessions();
    if (session) {
      $("#session-select").value = session;
      await openSession(session);
    }
  }
  setInterval(refreshQueries, 3000);
  // The list of archived sessions costs a query over the archive: asked for when the
  // selector is opened, and once a minute.
  setInterval(refreshSessions, 60000);
  render();
})();

// Fieldline fleet UI: a client of the admin JSON API (/api/v1), no build step.
// The session cookie is HttpOnly; the CSRF token from /ui/session goes in the
// x-csrf-token header of every state change. Live updates come from one
// EventSource (/ui/events). DOM nodes are built with h(), never from HTML strings,
// so data from agents cannot inject markup.
'use strict';

const S = {
  csrf: null, user: null, es: null, esAgent: undefined, page: null,
  fleet: { sort: 'id', dir: 1, filter: '', status: '', prev: {}, rates: {} },
  anomalies: { agent: '', series: '', min: 0 },
  dlqOpen: new Set(),
};

function h(tag, attrs, ...kids) {
  const svg = ['svg', 'path', 'line', 'text', 'g', 'polyline', 'rect', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
// Children for replaceChildren: nested arrays flattened, absent ones dropped.
const nodes = (...kids) => kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false);
const fmtTime = (ms) => (ms > 0 ? new Date(ms).toLocaleString() : 'never');
const fmtClock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const fmtNum = (v) => (v === null || v === undefined || Number.isNaN(v) ? '–'
  : Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v * 100) / 100) : v.toPrecision(4));
function ago(s) {
  if (s < 0) return 'never';
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function toast(msg) {
  const d = h('div', {}, msg);
  $('toast').append(d);
  setTimeout(() => d.remove(), 5000);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && S.csrf) headers['x-csrf-token'] = S.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  try { json = await resp.json(); } catch (_) { /* empty body */ }
  if (resp.status === 401 && !path.startsWith('/ui/login')) {
    showLogin();
    throw new ApiError(401, 'not logged in');
  }
  if (!resp.ok) throw new ApiError(resp.status, (json && json.error) || `HTTP ${resp.status}`);
  return json;
}

// ---------- session ----------

function showLogin() {
  S.csrf = null;
  closeEvents();
  $('top').hidden = true;
  $('page').hidden = true;
  $('login').hidden = false;
  $('login-user').focus();
}

async function start() {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    try {
      const s = await api('POST', '/ui/login', { user: $('login-user').value, password: $('login-password').value });
      $('login-password').value = '';
      loggedIn(s);
    } catch (e) {
      $('login-error').textContent = e.message;
    }
  });
  $('logout').addEventListener('click', async () => {
    try { await api('POST', '/ui/logout'); } catch (_) { /* already out */ }
    showLogin();
  });
  window.addEventListener('hashchange', route);
  try {
    loggedIn(await api('GET', '/ui/session'));
  } catch (_) { showLogin(); }
}

function loggedIn(s) {
  S.csrf = s.csrf;
  S.user = s.user;
  $('user').textContent = s.user;
  $('login').hidden = true;
  $('top').hidden = false;
  $('page').hidden = false;
  if (!location.hash || location.hash === '#') location.hash = '#/fleet';
  route();
}

// ---------- live events ----------

function closeEvents() {
  if (S.es) S.es.close();
  S.es = null;
  S.esAgent = undefined;
  $('live').textContent = 'offline';
  $('live').classList.remove('on');
}

function openEvents(agent) {
  if (S.es && S.esAgent === agent) return;
  closeEvents();
  const url = agent ? `/ui/events?agent=${encodeURIComponent(agent)}` : '/ui/events';
  const es = new EventSource(url);
  S.es = es;
  S.esAgent = agent;
  es.onopen = () => { $('live').textContent = 'live'; $('live').classList.add('on'); };
  es.onerror = () => { $('live').textContent = 'reconnecting'; $('live').classList.remove('on'); };
  const on = (name, fn) => es.addEventListener(name, (ev) => {
    if (!S.page) return;
    try { fn(ev.data ? JSON.parse(ev.data) : null); } catch (e) { console.error(e); }
  });
  on('tick', () => S.page.refresh && S.page.refresh());
  on('resync', () => S.page.refresh && S.page.refresh());
  on('config', () => S.page.refresh && S.page.refresh());
  on('anomaly', (a) => S.page.onAnomaly && S.page.onAnomaly(a));
  on('window', (w) => S.page.onWindow && S.page.onWindow(w));
  on('dead_letter', (d) => S.page.onDeadLetter && S.page.onDeadLetter(d));
}

// ---------- routing ----------

const PAGES = {};

async function route() {
  if (!S.csrf) return;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const name = PAGES[parts[0]] ? parts[0] : 'fleet';
  for (const a of document.querySelectorAll('header nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = $('page');
  root.replaceChildren();
  const page = PAGES[name](root, parts.slice(1));
  S.page = page;
  openEvents(page.agent);
  root.dataset.page = name;
  try {
    await page.refresh();
    root.dataset.ready = '1';
  } catch (e) {
    if (e.status !== 401) root.append(h('p', { class: 'error', role: 'alert' }, e.message));
  }
  const h1 = root.querySelector('h1');
  if (h1) { h1.tabIndex = -1; h1.focus(); }
}

// Re-renders `el` only when `data` changed, so refreshes do not steal focus.
function renderIfChanged(el, data, render) {
  const key = JSON.stringify(data);
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  el.replaceChildren(...nodes(render()));
}

function table(cols, rows, opts = {}) {
  const head = h('tr', {}, cols.map((c) => {
    const cls = c.num ? 'num' : null;
    if (!opts.sort || c.sort === false) return h('th', { class: cls, scope: 'col' }, c.label);
    const active = opts.sort.key === c.key;
    return h('th', { class: cls, scope: 'col', 'aria-sort': active ? (opts.sort.dir > 0 ? 'ascending' : 'descending') : 'none' },
      h('button', { type: 'button', onclick: () => opts.onSort(c.key), 'data-sort': c.key },
        c.label, active ? (opts.sort.dir > 0 ? ' ▲' : ' ▼') : ''));
  }));
  const body = h('tbody', {});
  fillRows(body, cols, rows, opts);
  return { el: h('div', { class: 'table-wrap' }, h('table', { class: 'stack' }, h('thead', {}, head), body)), body };
}

const shownHtml = new WeakMap();

function fillRows(body, cols, rows, opts = {}) {
  const fresh = rows.length ? rows.map((r) => h('tr', { class: opts.rowClass ? opts.rowClass(r) : null, 'data-id': opts.rowId ? opts.rowId(r) : null },
    cols.map((c) => h('td', { class: c.num ? 'num' : null, 'data-label': c.label }, c.cell ? c.cell(r) : fmtNum(r[c.key])))))
    : [h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, opts.empty || 'nothing yet'))];
  // Rows that look the same stay in place: a refresh must not swap the element
  // under a click in progress or under the keyboard focus.
  const html = fresh.map((r) => r.outerHTML).join('');
  if (shownHtml.get(body) === html) return;
  shownHtml.set(body, html);
  const old = [...body.children];
  if (old.length === fresh.length && old.every((r, i) => r.dataset.id && r.dataset.id === fresh[i].dataset.id)) {
    // Same rows in the same order: swap only the cells that changed, so links and
    // buttons in unchanged cells (and clicks on them in progress) stay put.
    old.forEach((r, i) => {
      r.className = fresh[i].className;
      // Snapshots: replaceWith moves a fresh cell out of its (live) row.
      const nus = [...fresh[i].children];
      [...r.children].forEach((td, j) => {
        if (td.innerHTML !== nus[j].innerHTML) td.replaceWith(nus[j]);
      });
    });
    return;
  }
  const active = document.activeElement;
  let restore = null;
  if (active && body.contains(active)) {
    const tr = active.closest('tr');
    restore = { id: tr.dataset.id, i: [...tr.querySelectorAll('a,button')].indexOf(active) };
  }
  body.replaceChildren(...fresh);
  if (restore && restore.id) {
    const tr = [...body.children].find((r) => r.dataset.id === restore.id);
    const el = tr && tr.querySelectorAll('a,button')[restore.i];
    if (el) el.focus();
  }
}

const badge = (s) => h('span', { class: `badge ${s}` }, s.replace('_', ' '));

// ---------- Fleet ----------

function counter(a, k) { return (a.counters && typeof a.counters[k] === 'number') ? a.counters[k] : 0; }

function ingestRate(a) {
  const F = S.fleet;
  const n = counter(a, 'readings_decoded');
  const prev = F.prev[a.id];
  if (prev && a.last_seen_ms > prev.ms && n >= prev.n) {
    F.rates[a.id] = (n - prev.n) / ((a.last_seen_ms - prev.ms) / 1000);
  }
  if (!prev || a.last_seen_ms > prev.ms) F.prev[a.id] = { ms: a.last_seen_ms, n };
  if (F.rates[a.id] !== undefined) return F.rates[a.id];
  // Until two heartbeats were seen: the average since the agent started.
  const up = (a.last_seen_ms - a.started_ms) / 1000;
  return up > 0 ? n / up : 0;
}

function labelMatch(a, filter) {
  if (!filter) return true;
  return filter.split(/[ ,]+/).filter(Boolean).every((term) => {
    const [k, v] = term.split('=');
    if (v === undefined) return a.id.includes(k) || Object.entries(a.labels || {}).some(([lk, lv]) => lk.includes(k) || lv.includes(k));
    return (a.labels || {})[k] === v;
  });
}

PAGES.fleet = (root) => {
  const F = S.fleet;
  const filter = h('input', { id: 'fleet-filter', type: 'search', value: F.filter, placeholder: 'site=berlin or text' });
  const status = h('select', { id: 'fleet-status' }, ['', 'online', 'stale', 'offline', 'never_seen', 'revoked']
    .map((s) => h('option', { value: s, selected: F.status === s }, s || 'any status')));
  const summary = h('p', { class: 'muted', id: 'fleet-summary', 'aria-live': 'polite' });
  let last = null;
  const cols = [
    { key: 'id', label: 'Agent', cell: (a) => h('a', { href: `#/agent/${encodeURIComponent(a.id)}` }, a.id) },
    { key: 'status', label: 'Status', cell: (a) => badge(a.status) },
    { key: 'version', label: 'Version', cell: (a) => a.version || '–' },
    { key: 'last_seen_age_s', label: 'Last seen', num: true, cell: (a) => h('span', { title: fmtTime(a.last_seen_ms) }, ago(a.last_seen_age_s)) },
    { key: 'config', label: 'Config desired / observed', cell: (a) => {
      const d = a.drift || {};
      if (d.state === 'no_config' || !d.state) return h('span', { class: 'muted' }, 'no fleet config');
      return h('span', {}, `g${d.desired_generation ?? '–'} / g${d.observed_generation ?? '–'} `, badge(d.state),
        d.state !== 'in_sync' ? h('strong', {}, ' drift') : null);
    } },
    { key: 'outbox', label: 'Outbox backlog', num: true, cell: (a) => fmtNum(counter(a, 'outbox_len')) },
    { key: 'rate', label: 'Ingest /s', num: true, cell: (a) => fmtNum(a.rate) },
    { key: 'dropped', label: 'Dropped', num: true, cell: (a) => fmtNum(counter(a, 'outbox_dropped')) },
    { key: 'late', label: 'Late', num: true, cell: (a) => fmtNum(counter(a, 'late_dropped')) },
    { key: 'labels', label: 'Labels', sort: false, cell: (a) => Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ') || '–' },
  ];
  const sortVal = (a, k) => ({
    config: a.drift ? a.drift.state : '', outbox: counter(a, 'outbox_len'), rate: a.rate,
    dropped: counter(a, 'outbox_dropped'), late: counter(a, 'late_dropped'),
  }[k] ?? a[k]);
  const onSort = (k) => { if (F.sort === k) F.dir = -F.dir; else { F.sort = k; F.dir = 1; } rebuild(); };
  const t = table(cols, [], { sort: F, onSort });
  let wrap = t.el;
  let body = t.body;
  function rows() {
    if (!last) return [];
    return last.filter((a) => labelMatch(a, F.filter) && (!F.status || a.status === F.status))
      .sort((x, y) => {
        const a = sortVal(x, F.sort); const b = sortVal(y, F.sort);
        return (a < b ? -1 : a > b ? 1 : 0) * F.dir;
      });
  }
  function draw() {
    const r = rows();
    fillRows(body, cols, r, {
      rowId: (a) => a.id,
      rowClass: (a) => (a.drift && ['pending', 'rejected'].includes(a.drift.state) ? 'drift' : null),
      empty: last && last.length ? 'no agent matches the filter' : 'no agent has enrolled yet',
    });
    const counts = {};
    for (const a of last || []) counts[a.status] = (counts[a.status] || 0) + 1;
    summary.textContent = `${(last || []).length} agents: ` + Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ') + ` · showing ${r.length}`;
  }
  function rebuild() {
    const focused = document.activeElement && document.activeElement.dataset.sort;
    const t2 = table(cols, [], { sort: F, onSort });
    wrap.replaceWith(t2.el);
    wrap = t2.el; body = t2.body;
    draw();
    if (focused) { const b = wrap.querySelector(`[data-sort="${focused}"]`); if (b) b.focus(); }
  }
  // `change` too: clearing a field (browser autofill, WebDriver) may fire only that.
  for (const ev of ['input', 'change']) filter.addEventListener(ev, () => { F.filter = filter.value.trim(); draw(); });
  status.addEventListener('change', () => { F.status = status.value; draw(); });
  root.append(h('h1', {}, 'Fleet'),
    h('div', { class: 'toolbar' },
      h('div', {}, h('label', { for: 'fleet-filter' }, 'Filter by label (key=value) or id'), filter),
      h('div', {}, h('label', { for: 'fleet-status' }, 'Status'), status)),
    summary, wrap);
  return {
    async refresh() {
      const [agents, drift] = await Promise.all([api('GET', '/api/v1/agents'), api('GET', '/api/v1/configs/drift')]);
      const byId = Object.fromEntries(drift.agents.map((d) => [d.agent, d]));
      last = agents.agents.map((a) => ({ ...a, drift: byId[a.id], rate: ingestRate(a) }));
      draw();
    },
  };
};

// ---------- Agent ----------

function chart(name, points) {
  const W = 600; const H = 250; const L = 64; const R = 12; const T = 14; const B = 40;
  const svg = h('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${name}: window mean over time` });
  if (!points.length) return svg;
  const t0 = points[0].end_ms; const t1 = Math.max(points[points.length - 1].end_ms, t0 + 1000);
  let lo = Math.min(...points.map((p) => p.min)); let hi = Math.max(...points.map((p) => p.max));
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    svg.append(h('line', { class: 'grid-line', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      h('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNum(v)));
  }
  for (let i = 0; i <= 3; i++) {
    const t = t0 + ((t1 - t0) * i) / 3;
    svg.append(h('text', { x: x(t), y: H - B + 18, 'text-anchor': i === 0 ? 'start' : i === 3 ? 'end' : 'middle' }, fmtClock(t)));
  }
  svg.append(h('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }),
    h('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }),
    h('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' }, 'window end (local time)'));
  const band = points.map((p) => `${x(p.end_ms)},${y(p.max)}`).concat(points.slice().reverse().map((p) => `${x(p.end_ms)},${y(p.min)}`));
  svg.append(h('path', { class: 'band', d: `M${band.join('L')}Z` }),
    h('polyline', { class: 'mean', points: points.map((p) => `${x(p.end_ms)},${y(p.mean)}`).join(' ') }));
  return svg;
}

// The unit comes from the pipeline's `unit` key; without one (sensors send bare
// values) the axis names the metric and says the unit is the sensor's instead of
// guessing one.
function yLabel(series, unit) {
  if (unit) return unit;
  const metric = series.split(' ')[0].split('/').pop();
  return `${metric} in the sensor's unit`;
}

PAGES.agent = (root, [id]) => {
  const head = h('div', { class: 'card', id: 'agent-head' });
  const cfg = h('div', { class: 'card', id: 'agent-config' });
  const series = h('div', { id: 'agent-series' });
  const charts = h('div', { class: 'grid', id: 'agent-charts' });
  const anomalies = h('ul', { class: 'feed', id: 'agent-anomalies' });
  const labelsIn = h('input', { id: 'agent-labels', size: 40, placeholder: 'site=berlin rack=3' });
  const labelsMsg = h('p', { id: 'agent-labels-msg', role: 'status' });
  const labelsBtn = h('button', { type: 'button', id: 'agent-labels-save', class: 'secondary' }, 'Save labels');
  labelsBtn.addEventListener('click', async () => {
    const labels = {};
    for (const term of labelsIn.value.split(/[ ,]+/).filter(Boolean)) {
      const [k, v] = term.split('=');
      if (!k || v === undefined) { labelsMsg.textContent = `\`${term}\` is not key=value`; return; }
      labels[k] = v;
    }
    try {
      await api('PUT', `/api/v1/agents/${encodeURIComponent(id)}/labels`, labels);
      labelsMsg.textContent = 'labels saved';
    } catch (e) { labelsMsg.textContent = e.message; }
  });
  const data = {};
  const units = {};
  const chartEls = {};
  function drawChart(name) {
    const pts = data[name] || [];
    let card = chartEls[name];
    if (!card) {
      card = h('figure', { class: 'card chart', 'data-series': name });
      chartEls[name] = card;
      charts.append(card);
    }
    const lastP = pts[pts.length - 1];
    card.replaceChildren(
      h('figcaption', {}, h('strong', {}, name), ` · window mean with min–max band; y: ${yLabel(name, units[name])}`,
        lastP ? h('span', { class: 'muted' }, ` · latest ${fmtNum(lastP.mean)} (${lastP.count} readings)`) : null),
      chart(name, pts));
  }
  root.append(h('h1', {}, `Agent ${id}`), head,
    h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'agent-labels' }, 'Labels (key=value, space-separated; they select group configs)'), labelsIn), labelsBtn),
    labelsMsg,
    h('h2', {}, 'Config'), cfg,
    h('h2', {}, 'Series (latest values, fleet-wide state)'), series,
    h('h2', {}, 'Window aggregates (live)'), charts,
    h('h2', {}, 'Recent anomalies'), anomalies);
  let anomaliesSeen = [];
  async function loadWindows() {
    const w = await api('GET', `/api/v1/agents/${encodeURIComponent(id)}/windows`);
    for (const s of w.series) { data[s.series] = s.points; units[s.series] = s.unit; drawChart(s.series); }
    if (!w.series.length && !charts.children.length) charts.append(h('p', { class: 'muted', id: 'no-charts' }, 'no window results received since this fleet server started'));
  }
  function drawAnomalies() {
    renderIfChanged(anomalies, anomaliesSeen, () => (anomaliesSeen.length ? anomaliesSeen.map((a) => h('li', {},
      h('strong', {}, a.series), ` score ${a.score.toFixed(2)} · value ${fmtNum(a.value)} · ${a.detector}: ${a.reason} · ${fmtTime(a.ts_ms)}`))
      : h('li', { class: 'muted' }, 'no anomaly received since this fleet server started')));
  }
  let first = true;
  return {
    agent: id,
    async refresh() {
      const q = encodeURIComponent(id);
      const [a, c, latest, an] = await Promise.all([
        api('GET', `/api/v1/agents/${q}`), api('GET', `/api/v1/configs/agents/${q}`),
        api('GET', `/api/v1/state/latest?agent=${q}&limit=1000`), api('GET', `/api/v1/events/anomalies?agent=${q}&limit=50`)]);
      renderIfChanged(head, [a.status, a.version, a.labels, Math.round(a.last_seen_age_s), a.counters], () => [
        h('p', {}, badge(a.status), ` version ${a.version || '–'} · last seen ${ago(a.last_seen_age_s)} · started ${fmtTime(a.started_ms)} · enrolled ${fmtTime(a.enrolled_ms)}`),
        h('p', {}, 'Labels: ', Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ') || 'none'),
        h('p', { class: 'muted' }, `outbox ${counter(a, 'outbox_len')} records · dead letters ${counter(a, 'dead_letters')} · late dropped ${counter(a, 'late_dropped')} · outbox dropped ${counter(a, 'outbox_dropped')} · acked seq ${a.last_acked_seq}`)]);
      if (first) labelsIn.value = Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
      const d = c.drift;
      renderIfChanged(cfg, [d, c.resolved && c.resolved.source, c.report], () => [
        h('p', { id: 'agent-config-state' }, d.state === 'no_config' ? 'No fleet config: the agent runs its local file. ' : '',
          badge(d.state), d.desired_generation ? ` desired generation ${d.desired_generation} (${d.desired_source})` : '',
          d.observed_generation !== null && d.observed_generation !== undefined ? ` · observed generation ${d.observed_generation}` : ''),
        d.error ? h('p', { class: 'error', role: 'alert' }, `Rejected: ${d.error}`) : null,
        h('p', {}, h('a', { href: `#/configs/agent/${encodeURIComponent(id)}` }, 'Edit this agent\'s config'))]);
      const rows = latest.latest.slice().sort((x, y) => (x.series < y.series ? -1 : 1));
      renderIfChanged(series, rows, () => table([
        { key: 'series', label: 'Series', cell: (r) => r.series.slice(id.length + 1) },
        { key: 'kind', label: 'From', cell: (r) => r.kind },
        { key: 'value', label: 'Latest value', num: true },
        { key: 'ts_ms', label: 'Event time', cell: (r) => fmtTime(r.ts_ms) }], rows, { empty: 'no values yet' }).el);
      anomaliesSeen = an.anomalies;
      drawAnomalies();
      if (first) { first = false; await loadWindows(); }
    },
    onWindow(w) {
      if (w.agent !== id) return;
      const pts = data[w.series] || (data[w.series] = []);
      units[w.series] = w.unit;
      const i = pts.findIndex((p) => p.end_ms === w.point.end_ms);
      if (i >= 0) pts[i] = w.point; else { pts.push(w.point); pts.sort((a, b) => a.end_ms - b.end_ms); }
      if (pts.length > 240) pts.shift();
      const none = $('no-charts'); if (none) none.remove();
      drawChart(w.series);
    },
    onAnomaly(a) {
      if (a.agent !== id) return;
      anomaliesSeen = [a, ...anomaliesSeen].slice(0, 50);
      drawAnomalies();
    },
  };
};

// ---------- Configs ----------

// Line diff (LCS); configs are small (≤ 256 KiB, usually a few dozen lines).
function diffLines(a, b) {
  const x = a.split('\n'); const y = b.split('\n');
  if (x.length * y.length > 4e6) return [{ op: ' ', line: '(too large to diff)' }];
  const n = x.length; const m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = []; let i = 0; let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push({ op: ' ', line: x[i] }); i++; j++; } else if (L[i + 1][j] >= L[i][j + 1]) { out.push({ op: '-', line: x[i++] }); } else { out.push({ op: '+', line: y[j++] }); }
  }
  while (i < n) out.push({ op: '-', line: x[i++] });
  while (j < m) out.push({ op: '+', line: y[j++] });
  return out;
}

PAGES.configs = (root, [kind, a, b]) => {
  const scopeKind = h('select', { id: 'cfg-kind' }, h('option', { value: 'agent', selected: kind !== 'group' }, 'one agent'), h('option', { value: 'group', selected: kind === 'group' }, 'a label group'));
  const agentSel = h('select', { id: 'cfg-agent' });
  const gKey = h('input', { id: 'cfg-gkey', value: kind === 'group' ? a || '' : '', placeholder: 'site', size: 12 });
  const gVal = h('input', { id: 'cfg-gval', value: kind === 'group' ? b || '' : '', placeholder: 'berlin', size: 12 });
  const agentBox = h('div', {}, h('label', { for: 'cfg-agent' }, 'Agent'), agentSel);
  const groupBox = h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'cfg-gkey' }, 'Label key'), gKey), h('div', {}, h('label', { for: 'cfg-gval' }, 'Label value'), gVal));
  const loadBtn = h('button', { type: 'button', class: 'secondary', id: 'cfg-load' }, 'Load current');
  const editor = h('textarea', { id: 'cfg-toml', spellcheck: 'false', 'aria-describedby': 'cfg-problems' });
  const problems = h('div', { id: 'cfg-problems', role: 'alert', 'aria-live': 'polite' });
  const diff = h('pre', { class: 'diff', id: 'cfg-diff', 'aria-label': 'difference to the current config' });
  const note = h('input', { id: 'cfg-note', size: 40, maxlength: 1000 });
  const canary = h('input', { id: 'cfg-canary', size: 30, placeholder: 'gw-1, gw-2' });
  const percent = h('input', { id: 'cfg-percent', type: 'number', min: 0, max: 100, value: 100, size: 4 });
  const rolloutBox = h('div', { class: 'toolbar' },
    h('div', {}, h('label', { for: 'cfg-canary' }, 'Canary agents (comma-separated)'), canary),
    h('div', {}, h('label', { for: 'cfg-percent' }, 'Share of the group, %'), percent));
  const saveBtn = h('button', { type: 'button', id: 'cfg-save', disabled: true }, 'Save and roll out');
  const status = h('div', { id: 'cfg-status' });
  const history = h('div', { id: 'cfg-history' });
  const scopes = h('div', { id: 'cfg-scopes' });
  const drift = h('div', { id: 'cfg-drift' });
  let current = '';
  let valid = false;
  let timer = null;
  let loadedFor = null;

  const scopePath = () => (scopeKind.value === 'agent'
    ? `agents/${encodeURIComponent(agentSel.value)}`
    : `groups/${encodeURIComponent(gKey.value.trim())}/${encodeURIComponent(gVal.value.trim())}`);
  function showKind() {
    agentBox.hidden = scopeKind.value !== 'agent';
    groupBox.hidden = rolloutBox.hidden = scopeKind.value !== 'group';
  }
  function drawDiff() {
    const d = diffLines(current, editor.value);
    const changed = d.some((l) => l.op !== ' ');
    diff.replaceChildren(...(changed ? d.map((l) => h('span', { class: l.op === '+' ? 'add' : l.op === '-' ? 'del' : null }, `${l.op} ${l.line}`)) : [h('span', { class: 'muted' }, 'no change from the current config')]));
    saveBtn.disabled = !valid || !changed || (scopeKind.value === 'agent' ? !agentSel.value : !(gKey.value.trim() && gVal.value.trim()));
  }
  async function validate() {
    const r = await api('POST', '/api/v1/configs/validate', { toml: editor.value });
    valid = r.valid;
    problems.replaceChildren(r.valid ? h('p', { class: 'muted', id: 'cfg-valid' }, '✓ valid for agents (same checks as fieldline-agent check-config)')
      : h('ul', { class: 'error' }, r.problems.map((p) => h('li', {}, p))));
    drawDiff();
  }
  editor.addEventListener('input', () => {
    valid = false; saveBtn.disabled = true; clearTimeout(timer);
    problems.replaceChildren(h('p', { class: 'muted' }, 'checking…')); timer = setTimeout(() => validate().catch((e) => toast(e.message)), 250); drawDiff(); });
  async function load() {
    status.replaceChildren();
    history.replaceChildren();
    current = '';
    let versions = [];
    let rollout = null;
    try {
      if (scopeKind.value === 'agent') {
        if (!agentSel.value) return;
        const c = await api('GET', `/api/v1/configs/${scopePath()}`);
        current = c.resolved ? c.resolved.toml : '';
        versions = c.override_history;
        const d = c.drift;
        status.append(h('p', {}, badge(d.state), d.desired_generation ? ` desired g${d.desired_generation} from ${d.desired_source}` : ' no fleet config',
          d.observed_generation !== null && d.observed_generation !== undefined ? ` · agent runs g${d.observed_generation}` : ''));
        if (d.error) status.append(h('p', { class: 'error' }, `Rejected by the agent: ${d.error}`));
      } else {
        if (!gKey.value.trim() || !gVal.value.trim()) return;
        try {
          const c = await api('GET', `/api/v1/configs/${scopePath()}`);
          current = c.desired ? c.desired.toml : '';
          versions = c.history;
          rollout = c.rollout;
        } catch (e) { if (e.status !== 404) throw e; }
      }
    } catch (e) { status.append(h('p', { class: 'error' }, e.message)); }
    editor.value = current;
    loadedFor = scopePath();
    if (rollout) {
      const more = h('input', { id: 'cfg-widen-percent', type: 'number', min: rollout.percent, max: 100, value: 100, size: 4 });
      status.append(h('p', {}, `Rollout of g${rollout.generation}: ${rollout.percent}% and canaries ${rollout.canary.join(', ') || 'none'}`),
        rollout.halted ? h('p', { class: 'error' }, `Halted: ${rollout.halted.agent} rejected it: ${rollout.halted.error}. Save a fixed config or roll back.`)
          : h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'cfg-widen-percent' }, 'Widen to %'), more),
            h('button', { type: 'button', class: 'secondary', onclick: async () => {
              try { await api('POST', `/api/v1/configs/${scopePath()}/rollout`, { percent: Number(more.value) }); toast('rollout widened'); load(); } catch (e) { toast(e.message); }
            } }, 'Widen rollout')));
    }
    const rows = versions.slice().reverse();
    const newest = rows.length ? rows[0].generation : null;
    history.append(table([
      { key: 'generation', label: 'Generation', num: true },
      { key: 'created_ms', label: 'Created', cell: (v) => fmtTime(v.created_ms) },
      { key: 'note', label: 'Note', cell: (v) => v.note || '–' },
      { key: 'toml', label: 'Config', cell: (v) => h('details', {}, h('summary', {}, `${v.toml.split('\n').length} lines`), h('pre', {}, v.toml)) },
      { key: 'act', label: 'Action', cell: (v) => (v.generation === newest ? h('span', { class: 'muted' }, 'current')
        : h('button', { type: 'button', class: 'secondary', 'data-rollback': v.generation, onclick: async () => {
          try {
            const r = await api('POST', `/api/v1/configs/${scopePath()}/rollback`, { generation: v.generation });
            toast(`rolled back: generation ${r.generation} has the config of ${v.generation}`);
            $('cfg-saved').textContent = `Rolled back: generation ${r.generation} has the config of generation ${v.generation}.`;
            load();
          } catch (e) { toast(e.message); }
        } }, `Roll back to g${v.generation}`)) }], rows, { empty: 'no versions for this scope yet' }).el);
    validate().catch((e) => toast(e.message));
  }
  loadBtn.addEventListener('click', load);
  scopeKind.addEventListener('change', () => { showKind(); load(); });
  agentSel.addEventListener('change', load);
  saveBtn.addEventListener('click', async () => {
    const body = { toml: editor.value, note: note.value };
    if (scopeKind.value === 'group') {
      const c = canary.value.split(',').map((s) => s.trim()).filter(Boolean);
      const p = Number(percent.value);
      if (c.length || p < 100) body.rollout = { canary: c, percent: p };
    }
    try {
      const r = await api('PUT', `/api/v1/configs/${scopePath()}`, body);
      toast(`saved: generation ${r.generation} for ${r.scope}`);
      $('cfg-saved').textContent = `Saved generation ${r.generation} for ${r.scope}.`;
      note.value = '';
      await load();
    } catch (e) { problems.replaceChildren(h('p', { class: 'error' }, e.message)); }
  });
  root.append(h('h1', {}, 'Configs'),
    h('div', { class: 'card' },
      h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'cfg-kind' }, 'Scope'), scopeKind), agentBox, groupBox, loadBtn),
      status,
      h('label', { for: 'cfg-toml' }, 'Desired config (TOML fragment merged over each agent\'s own file; no [agent] section)'), editor, problems,
      h('h2', {}, 'Difference to the current config'), diff,
      rolloutBox,
      h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'cfg-note' }, 'Note'), note), saveBtn),
      h('p', { id: 'cfg-saved', role: 'status' })),
    h('h2', {}, 'History'), history,
    h('h2', {}, 'Every scope with a config'), scopes,
    h('h2', {}, 'Drift (desired vs. observed)'), drift);
  showKind();
  let first = true;
  return {
    async refresh() {
      const [agents, list, dr] = await Promise.all([api('GET', '/api/v1/agents'), api('GET', '/api/v1/configs'), api('GET', '/api/v1/configs/drift')]);
      const ids = agents.agents.map((x) => x.id);
      if (agentSel.options.length !== ids.length) {
        const want = agentSel.value || (kind === 'agent' ? a : '') || ids[0] || '';
        agentSel.replaceChildren(...ids.map((i) => h('option', { value: i, selected: i === want }, i)));
      }
      renderIfChanged(scopes, list.configs, () => table([
        { key: 'scope', label: 'Scope', cell: (c) => c.scope },
        { key: 'generation', label: 'Generation', num: true },
        { key: 'versions', label: 'Versions', num: true },
        { key: 'rollout', label: 'Rollout', cell: (c) => (c.rollout ? `${c.rollout.percent}%${c.rollout.halted ? ' halted' : ''}` : '–') }], list.configs, { empty: 'no configs yet' }).el);
      renderIfChanged(drift, dr.agents, () => table([
        { key: 'agent', label: 'Agent', cell: (d) => h('a', { href: `#/agent/${encodeURIComponent(d.agent)}` }, d.agent) },
        { key: 'state', label: 'State', cell: (d) => badge(d.state) },
        { key: 'desired_generation', label: 'Desired', num: true },
        { key: 'observed_generation', label: 'Observed', num: true },
        { key: 'desired_source', label: 'Source', cell: (d) => d.desired_source || '–' },
        { key: 'error', label: 'Error', cell: (d) => d.error || '' }], dr.agents, { rowClass: (d) => (['pending', 'rejected'].includes(d.state) ? 'drift' : null) }).el);
      if (first) { first = false; await load(); } else if (loadedFor === scopePath() && editor.value === current) {
        // Keep the status current (e.g. the agent confirming) without touching edits.
        await refreshStatus();
      }
    },
  };
  async function refreshStatus() {
    if (scopeKind.value !== 'agent' || !agentSel.value) return;
    const c = await api('GET', `/api/v1/configs/${scopePath()}`);
    const d = c.drift;
    const p = status.querySelector('p');
    if (p) p.replaceChildren(badge(d.state), d.desired_generation ? ` desired g${d.desired_generation} from ${d.desired_source}` : ' no fleet config',
      d.observed_generation !== null && d.observed_generation !== undefined ? ` · agent runs g${d.observed_generation}` : '');
  }
};

// ---------- Anomalies ----------

PAGES.anomalies = (root) => {
  const A = S.anomalies;
  const fAgent = h('input', { id: 'an-agent', value: A.agent, size: 16 });
  const fSeries = h('input', { id: 'an-series', value: A.series, size: 16 });
  const fMin = h('input', { id: 'an-min', type: 'number', min: 0, max: 1, step: 0.05, value: A.min, size: 5 });
  const feed = h('ul', { class: 'feed', id: 'an-feed', 'aria-live': 'polite' });
  const top = h('div', { id: 'an-top' });
  let all = [];
  const match = (a) => (!A.agent || a.agent.includes(A.agent)) && (!A.series || a.series.includes(A.series)) && a.score >= A.min;
  const item = (a, fresh) => h('li', { class: fresh ? 'new' : null, 'data-series': `${a.agent}/${a.series}` },
    h('strong', {}, `${a.agent} / ${a.series}`), ` score ${a.score.toFixed(2)} · value ${fmtNum(a.value)} · ${a.detector}: ${a.reason}`,
    h('span', { class: 'muted' }, ` · event ${fmtTime(a.ts_ms)}`));
  function draw() {
    const shown = all.filter(match);
    feed.replaceChildren(...(shown.length ? shown.map((a) => item(a, false)) : [h('li', { class: 'muted', id: 'an-empty' }, 'no anomaly matches (the feed shows anomalies this fleet server received)')]));
  }
  for (const [el, k] of [[fAgent, 'agent'], [fSeries, 'series'], [fMin, 'min']]) {
    for (const ev of ['input', 'change']) el.addEventListener(ev, () => { A[k] = k === 'min' ? Number(el.value) || 0 : el.value.trim(); draw(); });
  }
  root.append(h('h1', {}, 'Anomalies'),
    h('div', { class: 'toolbar' },
      h('div', {}, h('label', { for: 'an-agent' }, 'Agent contains'), fAgent),
      h('div', {}, h('label', { for: 'an-series' }, 'Series contains'), fSeries),
      h('div', {}, h('label', { for: 'an-min' }, 'Minimum score'), fMin)),
    h('h2', {}, 'Live feed'), feed,
    h('h2', {}, 'Highest score per series (fleet-wide)'), top);
  let first = true;
  return {
    async refresh() {
      const t = await api('GET', '/api/v1/state/anomalies?limit=20');
      renderIfChanged(top, t.top_anomalies, () => table([
        { key: 'series', label: 'Series', cell: (r) => r.series },
        { key: 'score', label: 'Score', num: true, cell: (r) => r.score.toFixed(3) }], t.top_anomalies, { empty: 'no anomaly recorded' }).el);
      if (first) {
        first = false;
        all = (await api('GET', '/api/v1/events/anomalies?limit=500')).anomalies;
        draw();
      }
    },
    onAnomaly(a) {
      all = [a, ...all].slice(0, 500);
      if (!match(a)) return;
      const empty = $('an-empty'); if (empty) empty.remove();
      feed.prepend(item(a, true));
    },
  };
};

// ---------- Dead letters ----------

function bytesOf(v) {
  if (Array.isArray(v)) return v;
  return Array.from(new TextEncoder().encode(v));
}

function hexdump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length && i < 4096; i += 16) {
    const row = bytes.slice(i, i + 16);
    lines.push(`${i.toString(16).padStart(6, '0')}  ${row.map((b) => b.toString(16).padStart(2, '0')).join(' ').padEnd(48)}  ${row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('')}`);
  }
  if (bytes.length > 4096) lines.push(`… ${bytes.length - 4096} more bytes`);
  return lines.join('\n');
}

PAGES.dlq = (root) => {
  const list = h('div', { id: 'dlq-list' });
  const detail = h('div', { id: 'dlq-detail', class: 'card', hidden: true, tabindex: -1 });
  let entries = [];
  const f = (e, k) => (e.fields[k] === undefined ? '' : Array.isArray(e.fields[k]) ? `${e.fields[k].length} bytes (binary)` : e.fields[k]);
  async function act(method, path, msg) {
    try { await api(method, path); toast(msg); await page.refresh(true); } catch (e) { toast(e.message); }
  }
  function inspect(e) {
    detail.hidden = false;
    const payload = e.fields.payload === undefined ? null : bytesOf(e.fields.payload);
    detail.replaceChildren(...nodes(h('h2', {}, `Dead letter ${e.id}`),
      h('table', {}, h('tbody', {}, Object.entries(e.fields).filter(([k]) => k !== 'payload').map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, Array.isArray(v) ? `${v.length} bytes` : v))))),
      payload ? [h('h2', {}, `Payload (${payload.length} bytes)`),
        h('p', {}, 'As text: ', h('code', { id: 'dlq-payload-text' }, new TextDecoder('utf-8', { fatal: false }).decode(new Uint8Array(payload)))),
        h('pre', { id: 'dlq-payload-hex', 'aria-label': 'payload as hex' }, hexdump(payload))] : null,
      h('button', { type: 'button', class: 'secondary', onclick: () => { detail.hidden = true; } }, 'Close')));
    detail.focus();
  }
  function draw() {
    renderIfChanged(list, entries.map((e) => e.id), () => table([
      { key: 'id', label: 'Id', cell: (e) => e.id },
      { key: 'agent', label: 'Agent', cell: (e) => f(e, 'agent') },
      { key: 'kind', label: 'Kind', cell: (e) => f(e, 'kind') },
      { key: 'topic', label: 'Topic', cell: (e) => f(e, 'topic') || f(e, 'series') },
      { key: 'reason', label: 'Reason', cell: (e) => f(e, 'reason') },
      { key: 'when', label: 'Received', cell: (e) => fmtTime(Number(f(e, 'received_ms') || f(e, 'created_ms'))) },
      { key: 'act', label: 'Actions', cell: (e) => h('span', { class: 'toolbar' },
        h('button', { type: 'button', class: 'secondary', 'data-inspect': e.id, onclick: () => inspect(e) }, 'Inspect'),
        h('button', { type: 'button', 'data-replay': e.id, onclick: () => act('POST', `/api/v1/dlq/${encodeURIComponent(e.id)}/replay`, `dead letter ${e.id} replayed`) }, 'Replay'),
        h('button', { type: 'button', class: 'danger', 'data-delete': e.id, onclick: () => { if (window.confirm(`Delete dead letter ${e.id}?`)) act('DELETE', `/api/v1/dlq/${encodeURIComponent(e.id)}`, `dead letter ${e.id} deleted`); } }, 'Delete')) }],
    entries, { rowId: (e) => e.id, empty: 'the dead-letter queue is empty' }).el);
  }
  root.append(h('h1', {}, 'Dead letters'),
    h('p', { class: 'muted' }, 'Records that could not be decoded or applied. Replay moves one back to its records stream; the workers process it again (and file it here again if it still fails).'),
    list, detail);
  const page = {
    async refresh() {
      entries = (await api('GET', '/api/v1/dlq?limit=500')).entries;
      draw();
    },
    onDeadLetter() { page.refresh(); },
  };
  return page;
};

// ---------- Streams ----------

PAGES.streams = (root) => {
  const list = h('div', { id: 'streams-list' });
  const summary = h('p', { id: 'streams-summary' });
  root.append(h('h1', {}, 'Streams'), summary, list);
  return {
    async refresh() {
      const [st, sum] = await Promise.all([api('GET', '/api/v1/streams'), api('GET', '/api/v1/state/summary')]);
      summary.textContent = `${sum.distinct_series} distinct series from ${sum.distinct_devices} devices.`;
      renderIfChanged(list, st.streams, () => table([
        { key: 'name', label: 'Stream (partition)', cell: (s) => s.name },
        { key: 'length', label: 'Length', num: true },
        { key: 'groups', label: 'Consumer groups: lag / pending', cell: (s) => (s.groups.length ? s.groups.map((g) => `${g.name}: lag ${g.lag ?? 'unknown'}, pending ${g.pending}`).join('; ') : 'none (embedded store)') }],
      st.streams, { empty: 'no streams yet' }).el);
    },
  };
};

start();

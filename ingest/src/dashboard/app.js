// meterflow dashboard: polls the tenant API every few seconds and draws the summary,
// district usage, top consumers, open alerts and one meter. Plain DOM and hand-drawn
// SVG, no dependencies, no inline script (the page is served with a strict CSP).
'use strict';
(() => {
  /** Refresh period: fast enough to feel live, slow enough for hundreds of screens. */
  const POLL_MS = 3000;
  /** Time shown by the district chart per resolution, and the width of one window. */
  const WINDOWS = {
    minute: { span: 2 * 3600e3, step: 60e3, label: 'last 2 h, per minute' },
    hour: { span: 48 * 3600e3, step: 3600e3, label: 'last 48 h, per hour' },
  };
  /** Meter chart: readings of the 24 h before the meter's newest reading. */
  const METER_SPAN_MS = 24 * 3600e3;
  const TOP_LIMIT = 10;
  const ALERT_LIMIT = 200;
  /** Highest first; unknown priorities sort last. */
  const PRIORITY_RANK = { critical: 0, high: 1, normal: 2, medium: 2, low: 3 };
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const state = {
    tenant: 'demo',
    token: '',
    district: '',
    resolution: 'minute',
    meter: '',
    summary: null,
    busy: false,
    again: false,
    generation: 0, // bumped when the tenant changes: late answers for the old one are dropped
    lastOk: 0,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const url = '/api/v1/tenants/' + encodeURIComponent(state.tenant) + path;
    let res;
    try {
      res = await fetch(url, { headers, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'meterflow is unreachable (' + e.message + ')');
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      /* not JSON */
    }
    if (!res.ok) throw new ApiError(res.status, (body && body.error) || 'HTTP ' + res.status);
    return body;
  }

  // ---- formatting ----
  const nf = new Intl.NumberFormat();
  const int = (n) => (n == null ? '–' : nf.format(Math.round(n)));
  const axisNum = (n) => n.toLocaleString(undefined, { maximumFractionDigits: n < 10 ? 2 : 0 });
  function volume(litres) {
    if (litres == null) return '–';
    if (litres < 1000) return int(litres) + ' L';
    const m3 = litres / 1000;
    return m3.toLocaleString(undefined, { maximumFractionDigits: m3 < 100 ? 2 : m3 < 10000 ? 1 : 0 }) + ' m³';
  }
  const pad = (n) => String(n).padStart(2, '0');
  const hhmm = (ms) => { const d = new Date(ms); return pad(d.getHours()) + ':' + pad(d.getMinutes()); };
  const hhmmss = (ms) => hhmm(ms) + ':' + pad(new Date(ms).getSeconds());
  const dayHour = (ms) => new Date(ms).toLocaleDateString(undefined, { weekday: 'short' }) + ' ' + hhmm(ms);
  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return Math.round(s) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  const humanKind = (k) => (k || 'alert').replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
  function money(cents, currency) {
    try {
      const f = new Intl.NumberFormat(undefined, { style: 'currency', currency });
      return f.format(cents / 10 ** f.resolvedOptions().maximumFractionDigits);
    } catch {
      return (cents / 100).toFixed(2) + ' ' + (currency || '');
    }
  }

  /** Builds an element; children are nodes or text (never parsed as HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of children) if (c != null) el.append(c);
    return el;
  }
  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    return el;
  }
  function setEmpty(id, text, good) {
    const el = $(id);
    el.textContent = text || '';
    el.hidden = !text;
    el.classList.toggle('good', !!good);
  }

  // ---- chart ----
  /** A round axis maximum ≥ v whose quarters are round too: (1, 2, 4, 6 or 8) × 10^k. */
  function niceCeil(v) {
    if (!(v > 0)) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /**
   * Draws points {x: epoch ms, y, cls?, title} over [x0, x1] into an SVG with a viewBox.
   * kind 'line' draws an area, a line and a circle (class "pt") per point; 'bar' a rect
   * (class "bar") per point, `step` ms wide.
   */
  function drawChart(el, points, { kind, x0, x1, step, xLabel, yFormat }) {
    const [, , W, H] = el.getAttribute('viewBox').split(' ').map(Number);
    const L = 58, R = 12, T = 10, B = 24;
    const pw = W - L - R, ph = H - T - B;
    // At least 4 so that the five gridlines carry distinct whole numbers.
    const yMax = niceCeil(Math.max(4, ...points.map((p) => p.y)));
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * pw;
    const sy = (y) => T + ph - (y / yMax) * ph;
    const nodes = [];
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4, y = sy(v);
      nodes.push(svg('line', { class: 'grid-line', x1: L, x2: W - R, y1: y, y2: y }));
      nodes.push(svg('text', { class: 'axis', x: L - 6, y: y + 4, 'text-anchor': 'end' }, yFormat(v)));
    }
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const x = x0 + ((x1 - x0) * i) / ticks;
      const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
      nodes.push(svg('text', { class: 'axis', x: sx(x), y: H - 6, 'text-anchor': anchor }, xLabel(x)));
    }
    const pts = points.filter((p) => p.x >= x0 && p.x <= x1).sort((a, b) => a.x - b.x);
    if (kind === 'bar') {
      const bw = Math.max(1.5, (step / (x1 - x0)) * pw * 0.8);
      for (const p of pts) {
        const y = sy(p.y);
        const r = svg('rect', { class: 'bar ' + (p.cls || ''), x: sx(p.x) - bw / 2, y, width: bw, height: Math.max(0, T + ph - y) });
        r.append(svg('title', {}, p.title));
        nodes.push(r);
      }
    } else if (pts.length) {
      const line = pts.map((p, i) => (i ? 'L' : 'M') + sx(p.x).toFixed(1) + ' ' + sy(p.y).toFixed(1)).join(' ');
      const base = (T + ph).toFixed(1);
      const first = sx(pts[0].x).toFixed(1), last = sx(pts[pts.length - 1].x).toFixed(1);
      nodes.push(svg('path', { class: 'area', d: line + ' L' + last + ' ' + base + ' L' + first + ' ' + base + ' Z' }));
      nodes.push(svg('path', { class: 'series', d: line }));
      const r = pts.length > 90 ? 2 : 3;
      for (const p of pts) {
        const c = svg('circle', { class: 'pt', cx: sx(p.x), cy: sy(p.y), r });
        c.append(svg('title', {}, p.title));
        nodes.push(c);
      }
    }
    el.replaceChildren(...nodes);
    el.dataset.points = String(pts.length);
    el.toggleAttribute('hidden', !pts.length); // empty: the caller says why instead
    return pts.length;
  }

  // ---- sections ----
  function renderSummary(s) {
    state.summary = s;
    const usage = $('kpi-usage'), meters = $('kpi-meters'), alerts = $('kpi-alerts');
    usage.textContent = s ? volume(s.usage_today_l) : '–';
    usage.dataset.value = s ? s.usage_today_l : '';
    $('kpi-usage-l').textContent = s ? int(s.usage_today_l) + ' L' : '';
    meters.textContent = s ? int(s.meters_reporting) : '–';
    meters.dataset.value = s ? s.meters_reporting : '';
    alerts.textContent = s ? int(s.alerts_open) : '–';
    alerts.dataset.value = s ? s.alerts_open : '';
    const card = $('kpi-alerts-card');
    card.classList.toggle('alarm', !!s && s.alerts_open > 0);
    card.classList.toggle('quiet', !!s && s.alerts_open === 0);
    $('kpi-alerts-note').textContent = s ? (s.alerts_open ? 'needs attention' : 'all clear') : '';
    $('kpi-day').textContent = (s && s.day) || '–';
    $('kpi-updated').textContent = s && s.updated_at ? 'computed ' + hhmmss(s.updated_at) : '';
    $('empty').hidden = !!s && s.meters_reporting > 0;
    $('sim-cmd').textContent =
      'meterflow-sim --mqtt ' + location.hostname + ':1883 --tenant ' + state.tenant + ' --meters 100 --messages-per-meter 24';
  }

  async function loadSummary() {
    try {
      renderSummary(await api('/summary'));
    } catch (e) {
      // A tenant that exists but has no figures yet is "no data", not an error.
      if (e.status === 404 && !/no tenant/i.test(e.message)) return renderSummary(null);
      throw e;
    }
  }

  async function loadUsage() {
    const districts = (await api('/districts')) || [];
    const select = $('district');
    const names = districts.map(String);
    if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
      select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
    }
    if (!names.includes(state.district)) state.district = names[0] || '';
    select.value = state.district;
    const chart = $('district-chart');
    if (!state.district) {
      drawChart(chart, [], axesFor(Date.now()));
      $('usage-meta').textContent = '';
      return setEmpty('usage-empty', 'No district has usage yet: districts appear once meters report.');
    }
    const now = Date.now();
    const win = WINDOWS[state.resolution];
    const from = Math.floor((now - win.span) / win.step) * win.step;
    const rows = (await api('/districts/' + encodeURIComponent(state.district) + '/usage?from=' + from + '&to=' + (now + win.step) + '&resolution=' + state.resolution)) || [];
    const opts = axesFor(now);
    const points = rows.map((r) => ({
      x: r.start_ms,
      y: r.usage_l,
      title: (state.resolution === 'hour' ? dayHour(r.start_ms) : hhmm(r.start_ms)) + ' · ' + int(r.usage_l) + ' L · ' + int(r.meters) + ' meters' + (r.p90_l != null ? ' · p90 ' + int(r.p90_l) + ' L/meter' : ''),
    }));
    const shown = drawChart(chart, points, opts);
    chart.setAttribute('aria-label', 'Usage of district ' + state.district + ', ' + win.label + ', ' + shown + ' points');
    if (!shown) {
      $('usage-meta').textContent = win.label;
      return setEmpty('usage-empty', 'No usage in district ' + state.district + ' in the ' + win.label.replace(', per', ' (per') + ')' + '. Try the hour view, or start the simulator.');
    }
    setEmpty('usage-empty', '');
    const total = rows.reduce((a, r) => a + r.usage_l, 0);
    const peak = rows.reduce((a, r) => (r.usage_l > a.usage_l ? r : a), rows[0]);
    const latest = rows.reduce((a, r) => (r.start_ms > a.start_ms ? r : a), rows[0]);
    const night = rows.map((r) => r.night_flow_lph).filter((v) => v != null);
    $('usage-meta').textContent =
      win.label + ' · total ' + volume(total) + ' · peak ' + int(peak.usage_l) + ' L at ' + hhmm(peak.start_ms) +
      ' · ' + int(latest.meters) + ' meters in latest window' + (night.length ? ' · min night flow ' + int(Math.min(...night)) + ' L/h' : '');
  }

  function axesFor(now) {
    const win = WINDOWS[state.resolution];
    return {
      kind: 'line',
      x0: now - win.span,
      x1: now,
      step: win.step,
      xLabel: state.resolution === 'hour' ? dayHour : hhmm,
      yFormat: (v) => (v >= 10000 ? axisNum(v / 1000) + ' m³' : axisNum(v) + ' L'),
    };
  }

  async function loadTop() {
    const rows = (await api('/top?limit=' + TOP_LIMIT)) || [];
    const max = Math.max(1, ...rows.map((r) => r.usage_l));
    const body = $('top').tBodies[0];
    body.replaceChildren(
      ...rows.map((r, i) => {
        const bar = h('div', { class: 'meter-bar' });
        bar.style.width = ((100 * r.usage_l) / max).toFixed(1) + '%';
        return h('tr', { class: r.meter === state.meter ? 'selected' : null, 'data-meter': r.meter },
          h('td', null, String(i + 1)),
          h('td', null, meterLink(r.meter)),
          h('td', { class: 'num' }, int(r.usage_l)),
          h('td', { class: 'barcol' }, bar));
      }),
    );
    $('top').hidden = !rows.length;
    setEmpty('top-empty', rows.length ? '' : 'No consumption recorded today yet.');
  }

  function meterLink(id) {
    return h('button', { type: 'button', class: 'linkish', title: 'Show meter ' + id, onclick: () => selectMeter(id) }, id);
  }

  async function loadAlerts() {
    const rows = ((await api('/alerts?state=open&limit=' + ALERT_LIMIT)) || []).slice();
    const rank = (p) => PRIORITY_RANK[p] ?? 9;
    rows.sort((a, b) => rank(a.priority) - rank(b.priority) || b.at - a.at);
    $('alerts').replaceChildren(
      ...rows.map((a) =>
        h('li', { class: 'alert ' + (a.priority || ''), 'data-kind': a.kind, 'data-meter': a.meter, 'data-priority': a.priority },
          h('span', { class: 'prio' }, a.priority || '?'),
          h('span', null, h('span', { class: 'kind' }, humanKind(a.kind)), ' · ', meterLink(a.meter)),
          h('span', { class: 'when', title: new Date(a.opened_at).toLocaleString() }, ago(a.opened_at)),
          h('span', { class: 'detail' }, a.detail || ''))),
    );
    $('alerts-count').textContent = rows.length ? String(rows.length) : '';
    setEmpty('alerts-empty', rows.length ? '' : 'No open alerts. All clear.', true);
  }

  async function loadMeter() {
    const id = state.meter;
    $('meter-title').replaceChildren('Meter', ...(id ? [' ', h('span', { class: 'id' }, id)] : []));
    if (!id) {
      $('meter-detail').hidden = true;
      return setEmpty('meter-empty', 'Pick a meter in the top list or an alert, or type its id.');
    }
    let view;
    try {
      view = await api('/meters/' + encodeURIComponent(id));
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) throw e;
      $('meter-detail').hidden = true;
      return setEmpty('meter-empty', e.message);
    }
    if (id !== state.meter) return;
    const last = view.last_ts || Date.now();
    const period = state.summary && state.summary.day ? state.summary.day.slice(0, 7) : new Date(last).toISOString().slice(0, 7);
    const [readings, bill] = await Promise.all([
      api('/meters/' + encodeURIComponent(id) + '/readings?from=' + (last - METER_SPAN_MS) + '&to=' + (last + 1) + '&limit=2000'),
      api('/bills/' + period + '/' + encodeURIComponent(id)).catch((e) => {
        if (e.status === 404) return null;
        throw e;
      }),
    ]);
    if (id !== state.meter) return;
    setEmpty('meter-empty', '');
    $('meter-detail').hidden = false;
    const fact = (label, value, cls) => h('div', null, h('dt', null, label), h('dd', { class: cls || null }, value));
    const billText = bill ? money(bill.amount_cents, bill.currency) + (bill.final ? ' · final' : bill.estimated ? ' · estimated' : ' · so far') : 'no bill yet';
    $('meter-facts').replaceChildren(
      fact('Last reading · ' + (view.last_ts ? ago(view.last_ts) : 'never'), view.last_ts ? hhmmss(view.last_ts) : '–'),
      fact('Register', view.reg != null ? (view.reg / 1000).toLocaleString(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 }) + ' m³' : '–'),
      fact('Flow', view.flow != null ? int(view.flow) + ' L/h' : '–'),
      fact('Temperature', view.temp != null ? (view.temp / 10).toFixed(1) + ' °C' : '–'),
      fact('Quality', view.quality || '–', 'q-' + view.quality),
      fact('Today', int(view.today_l) + ' L'),
      fact('Period ' + period, bill ? volume(bill.usage_l) : '–'),
      fact('Bill ' + period, billText),
    );
    const rows = readings || [];
    const points = rows.map((r) => ({
      x: r.ts,
      y: r.interval_l || 0,
      cls: r.quality !== 'actual' ? r.quality : '',
      title: hhmm(r.ts) + ' · ' + int(r.interval_l || 0) + ' L · flow ' + int(r.flow) + ' L/h · ' + r.quality,
    }));
    const step = rows.length > 1 ? Math.max(60e3, (rows[rows.length - 1].ts - rows[0].ts) / (rows.length - 1)) : 900e3;
    // Fit the time axis to the readings (at most 24 h), so a young meter's few bars show.
    const x0 = rows.length ? Math.max(last - METER_SPAN_MS, rows[0].ts - step) : last - METER_SPAN_MS;
    const shown = drawChart($('meter-chart'), points, {
      kind: 'bar', x0, x1: last + step / 2, step, xLabel: hhmm, yFormat: (v) => axisNum(v) + ' L',
    });
    const total = rows.reduce((a, r) => a + (r.interval_l || 0), 0);
    $('meter-meta').textContent = shown
      ? 'litres per reading, up to 24 h before the newest · ' + shown + ' readings · ' + int(total) + ' L · yellow: estimated, orange: suspect'
      : 'no readings in the 24 h before the newest';
  }

  function selectMeter(id) {
    state.meter = id;
    $('meter').value = id;
    history.replaceState(null, '', '#meter=' + encodeURIComponent(id));
    for (const tr of $('top').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.meter === id);
    loadMeter().catch(report1);
    $('meter-title').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }

  // ---- status and errors ----
  function report(errors) {
    const banner = $('banner'), live = $('live'), token = $('token');
    token.removeAttribute('aria-invalid');
    if (!errors.length) {
      state.lastOk = Date.now();
      banner.hidden = true;
      live.className = 'live ok';
      $('live-text').textContent = 'live · ' + hhmmss(state.lastOk);
      return;
    }
    const auth = errors.find((e) => e.status === 401 || e.status === 403);
    const down = errors.find((e) => e.status === 0);
    live.className = 'live error';
    banner.className = 'banner';
    if (auth) {
      banner.textContent = 'Tenant "' + state.tenant + '" needs an API token: enter it in the "API token" field above and press Open. (' + auth.message + ')';
      token.setAttribute('aria-invalid', 'true');
      $('live-text').textContent = 'token needed';
    } else if (down) {
      banner.textContent = 'meterflow is unreachable; retrying every ' + POLL_MS / 1000 + ' s.' + (state.lastOk ? ' Figures below are from ' + hhmmss(state.lastOk) + '.' : '');
      $('live-text').textContent = 'offline';
    } else {
      const messages = [...new Set(errors.map((e) => e.message))];
      banner.className = 'banner warn';
      banner.textContent = messages.join(' · ');
      $('live-text').textContent = 'degraded · ' + hhmmss(Date.now());
    }
    banner.hidden = false;
  }
  const report1 = (e) => report([e]);

  async function refresh() {
    if (document.hidden) return;
    if (state.busy) {
      state.again = true; // e.g. the tenant changed mid-poll: poll again right after
      return;
    }
    state.busy = true;
    const generation = state.generation;
    try {
      // The summary first: the meter's bill period comes from the tenant's day.
      const first = await Promise.allSettled([loadSummary()]);
      const rest = await Promise.allSettled([loadUsage(), loadTop(), loadAlerts(), loadMeter()]);
      if (generation !== state.generation) return;
      report([...first, ...rest].filter((r) => r.status === 'rejected').map((r) => r.reason));
    } finally {
      state.busy = false;
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  }

  /** Forgets what the page shows, so one tenant's data never sits under another's name. */
  function clearPanels() {
    renderSummary(null);
    $('empty').hidden = true;
    $('alerts').replaceChildren();
    $('alerts-count').textContent = '';
    $('top').tBodies[0].replaceChildren();
    $('district').replaceChildren();
    $('district-chart').toggleAttribute('hidden', true);
    $('usage-meta').textContent = '';
    $('meter-detail').hidden = true;
    for (const id of ['usage-empty', 'alerts-empty', 'top-empty']) setEmpty(id, '');
  }

  function openTenant(tenant, token) {
    if (tenant !== state.tenant) {
      state.meter = '';
      $('meter').value = '';
      history.replaceState(null, '', location.pathname + location.search);
    }
    state.tenant = tenant;
    state.token = token;
    state.generation++;
    state.summary = null;
    state.district = '';
    localStorage.setItem('mf.tenant', tenant);
    if (token) localStorage.setItem('mf.token.' + tenant, token);
    else localStorage.removeItem('mf.token.' + tenant);
    clearPanels();
    refresh();
  }

  function init() {
    const params = new URLSearchParams(location.search);
    const tenant = params.get('tenant') || localStorage.getItem('mf.tenant') || 'demo';
    const token = localStorage.getItem('mf.token.' + tenant) || '';
    $('tenant').value = tenant;
    $('token').value = token;
    const m = /meter=([^&]+)/.exec(location.hash);
    if (m) {
      state.meter = decodeURIComponent(m[1]);
      $('meter').value = state.meter;
    }
    $('tenant-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      openTenant($('tenant').value.trim(), $('token').value.trim());
    });
    $('meter-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('meter').value.trim();
      if (id) selectMeter(id);
    });
    $('district').addEventListener('change', (ev) => {
      state.district = ev.target.value;
      loadUsage().catch(report1);
    });
    for (const r of document.querySelectorAll('input[name=res]')) {
      r.addEventListener('change', () => {
        state.resolution = r.value;
        loadUsage().catch(report1);
      });
    }
    document.addEventListener('visibilitychange', () => document.hidden || refresh());
    openTenant(tenant, token);
    setInterval(refresh, POLL_MS);
  }

  init();
})();

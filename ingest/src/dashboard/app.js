// meterflow dashboard: polls the tenant API every few seconds and draws the summary,
// district usage, the district's water balance, top consumers, open alerts, the validation
// exceptions (with their decisions), silent meters, a meter search and one meter with its
// alert history. Plain DOM and hand-drawn SVG, no dependencies, no
// inline script (the page is served with a strict CSP).
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
  /** Open validation exceptions shown (oldest meters first, as the API lists them). */
  const EXCEPTION_LIMIT = 200;
  /** What each exception reason means to an operator. */
  const EXCEPTION_REASONS = {
    regression: 'register went backwards',
    implausible_jump: 'implausible jump',
    unconfirmed_exchange: 'possible meter exchange',
    late_ahead: 'late read ahead of the register',
    recorded_exchange: 'recorded meter exchange',
  };
  /** A meter's alert history: its newest episodes (the API's largest page is 1,000). */
  const HISTORY_LIMIT = 1000;
  /** Silent meters and search results per page ("More" fetches the next one). */
  const SILENT_PAGE = 50;
  const SEARCH_PAGE = 10;
  /** Local days the water balance shows, today included: a week of night flows for a trend. */
  const BALANCE_DAYS = 7;
  /** Districts compared when the page picks the busiest one (one usage call each). */
  const MAX_AUTO_DISTRICTS = 24;
  /** Low battery at or below this percent: the alert rules' default `low_battery_pct`. */
  const LOW_BATTERY_PCT = 10;
  /** Weak radio at or below this RSSI: where NB-IoT and wM-Bus links start to drop reads. */
  const WEAK_RSSI_DBM = -110;
  /** Time-axis steps in minutes, round in any zone (offsets are multiples of 15 min). */
  const TICK_STEPS_MIN = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];
  /** The meter chart spans at least this much, so a young meter's bars have labelled times. */
  const METER_MIN_SPAN_MS = 3600e3;
  /** At most this many time labels: each needs ~80 px of a 720 px chart. */
  const MAX_TIME_TICKS = 8;
  /** Value axis: about this many intervals between round numbers. */
  const VALUE_INTERVALS = 4;
  /** Highest first; unknown priorities sort last. */
  const PRIORITY_RANK = { critical: 0, high: 1, normal: 2, medium: 2, low: 3 };
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const state = {
    tenant: 'demo',
    token: '',
    district: '',
    /** 'user' once chosen (or restored from the hash / localStorage), else 'auto'. */
    districtSource: 'auto',
    resolution: 'minute',
    meter: '',
    silentFor: 3600,
    silentShown: 0,
    silentNext: null,
    search: { q: '', next: null },
    summary: null,
    busy: false,
    again: false,
    /** What the operator typed as the reason for each open exception (`meter@ts`). */
    whys: new Map(),
    generation: 0, // bumped when the tenant changes: late answers for the old one are dropped
    lastOk: 0,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** A call of the tenant API; `body`, when given, is POSTed as JSON. */
  async function api(path, payload) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const url = '/api/v1/tenants/' + encodeURIComponent(state.tenant) + path;
    const init = { headers, cache: 'no-store' };
    if (payload !== undefined) {
      init.method = 'POST';
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    let res;
    try {
      res = await fetch(url, init);
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

  // ---- time, in the tenant's zone ----
  /**
   * Wall-clock fields in one IANA zone. The zone is the API's (summary `time_zone`)
   * when it says, else `?tz=` in the page's address, else the browser's.
   */
  function zoneClock(zone) {
    let fmt;
    try {
      fmt = new Intl.DateTimeFormat('en-US', {
        timeZone: zone, hourCycle: 'h23', weekday: 'short', year: 'numeric', month: '2-digit',
        day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
      });
    } catch {
      return null; // not a zone this browser knows
    }
    const parts = (ms) => {
      const out = {};
      for (const p of fmt.formatToParts(ms)) out[p.type] = p.value;
      return out;
    };
    return { zone, parts };
  }
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  let clock = zoneClock(browserZone);

  function setZone(zone) {
    if (clock && clock.zone === zone) return;
    clock = zoneClock(zone) || zoneClock(browserZone);
    $('zone-note').textContent = 'times in ' + clock.zone + (clock.zone === zone ? '' : ' (unknown zone ' + zone + ')');
  }
  const hhmm = (ms) => { const p = clock.parts(ms); return p.hour + ':' + p.minute; };
  const hhmmss = (ms) => { const p = clock.parts(ms); return p.hour + ':' + p.minute + ':' + p.second; };
  const dayHour = (ms) => clock.parts(ms).weekday + ' ' + hhmm(ms);
  const fullTime = (ms) => { const p = clock.parts(ms); return p.year + '-' + p.month + '-' + p.day + ' ' + hhmmss(ms) + ' ' + clock.zone; };
  const minuteOfDay = (ms) => { const p = clock.parts(ms); return Number(p.hour) * 60 + Number(p.minute); };

  // ---- numbers ----
  const nf = new Intl.NumberFormat();
  const int = (n) => (n == null ? '–' : nf.format(Math.round(n)));
  const axisNum = (n) => n.toLocaleString(undefined, { maximumFractionDigits: 2 });
  function volume(litres) {
    if (litres == null) return '–';
    if (litres < 1000) return int(litres) + ' L';
    const m3 = litres / 1000;
    return m3.toLocaleString(undefined, { maximumFractionDigits: m3 < 100 ? 2 : m3 < 10000 ? 1 : 0 }) + ' m³';
  }
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

  // ---- DOM ----
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

  // ---- axes ----
  /** Round instants in [x0, x1] of the current zone: every 5, 10, 15, 30 min, 1, 2, 3, 6, 12 or 24 h. */
  function timeTicks(x0, x1) {
    const spanMin = (x1 - x0) / 60e3;
    const step = TICK_STEPS_MIN.find((s) => spanMin / s <= MAX_TIME_TICKS) || TICK_STEPS_MIN[TICK_STEPS_MIN.length - 1];
    // Every zone's round times lie on the UTC 5-minute (15-minute) grid.
    const walk = (step % 15 === 0 ? 15 : step % 5 === 0 ? 5 : 1) * 60e3;
    const ticks = [];
    for (let t = Math.ceil(x0 / walk) * walk; t <= x1; t += walk) {
      if (minuteOfDay(t) % step === 0) ticks.push(t);
    }
    // Over a day, or at a midnight, the label names the day too.
    const label = (t) => (spanMin > 24 * 60 || minuteOfDay(t) === 0 ? dayHour(t) : hhmm(t));
    return { stepMin: step, ticks, label };
  }

  /** Round values from 0 to at least `max`: a step of 1, 2 or 5 × 10^k litres. */
  function valueTicks(max) {
    const raw = Math.max(max, VALUE_INTERVALS) / VALUE_INTERVALS;
    const p = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
    const top = Math.max(step, Math.ceil(max / step) * step);
    const ticks = [];
    for (let v = 0; v <= top; v += step) ticks.push(v);
    return { step, top, ticks };
  }
  /** Litres, or m³ once the axis reaches 10 m³ (its steps are then whole m³). */
  const litresLabel = (top) => (top >= 10000 ? (v) => axisNum(v / 1000) + ' m³' : (v) => axisNum(v) + ' L');

  /** Runs of points no more than one `step` apart: a missing window breaks the line. */
  function segments(pts, step) {
    const runs = [];
    for (const p of pts) {
      const run = runs[runs.length - 1];
      if (run && p.x - run[run.length - 1].x <= step * 1.5) run.push(p);
      else runs.push([p]);
    }
    return runs;
  }

  // ---- chart ----
  /**
   * Draws points {x: epoch ms, y, cls?, title} over [x0, x1] into an SVG with a viewBox.
   * kind 'line' draws an area, a line and a circle (class "pt") per point, with one
   * path per run of consecutive windows (`step` apart); 'bar' a rect (class "bar") per
   * point, `step` ms wide. Axis labels carry their value: `data-t` (ms) and `data-v`.
   */
  function drawChart(el, points, { kind, x0, x1, step, unit }) {
    const [, , W, H] = el.getAttribute('viewBox').split(' ').map(Number);
    const L = 58, R = 12, T = 22, B = 24;
    const pw = W - L - R, ph = H - T - B;
    const pts = points.filter((p) => p.x >= x0 && p.x <= x1).sort((a, b) => a.x - b.x);
    const values = valueTicks(Math.max(0, ...pts.map((p) => p.y)));
    const yLabel = litresLabel(values.top);
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * pw;
    const sy = (y) => T + ph - (y / values.top) * ph;
    const nodes = [];
    for (const v of values.ticks) {
      const y = sy(v);
      nodes.push(svg('line', { class: 'grid-line', x1: L, x2: W - R, y1: y, y2: y }));
      nodes.push(svg('text', { class: 'axis y', x: L - 6, y: y + 4, 'text-anchor': 'end', 'data-v': v }, yLabel(v)));
    }
    nodes.push(svg('text', { class: 'axis unit', x: L, y: 11 }, unit || ''));
    const time = timeTicks(x0, x1);
    for (const t of time.ticks) {
      const x = sx(t);
      const anchor = x - L < 20 ? 'start' : W - R - x < 20 ? 'end' : 'middle';
      nodes.push(svg('line', { class: 'tick', x1: x, x2: x, y1: T + ph, y2: T + ph + 4 }));
      nodes.push(svg('text', { class: 'axis x', x, y: H - 6, 'text-anchor': anchor, 'data-t': t }, time.label(t)));
    }
    const runs = kind === 'bar' ? [] : segments(pts, step);
    if (kind === 'bar') nodes.push(...bars(pts, { sx, sy, bw: Math.max(1.5, (step / (x1 - x0)) * pw * 0.8), base: T + ph }));
    else nodes.push(...lines(runs, { sx, sy, base: T + ph }));
    el.replaceChildren(...nodes);
    el.dataset.points = String(pts.length);
    el.dataset.segments = String(runs.length);
    el.dataset.tickMinutes = String(time.stepMin);
    el.toggleAttribute('hidden', !pts.length); // empty: the caller says why instead
    return pts.length;
  }

  function bars(pts, { sx, sy, bw, base }) {
    return pts.map((p) => {
      const y = sy(p.y);
      const r = svg('rect', { class: 'bar ' + (p.cls || ''), x: sx(p.x) - bw / 2, y, width: bw, height: Math.max(0, base - y) });
      r.append(svg('title', {}, p.title));
      return r;
    });
  }

  /** One area and one line per run; a run of one window is a lone point. */
  function lines(runs, { sx, sy, base }) {
    const nodes = [];
    const r = runs.reduce((n, run) => n + run.length, 0) > 90 ? 2 : 3;
    for (const run of runs) {
      const line = run.map((p, i) => (i ? 'L' : 'M') + sx(p.x).toFixed(1) + ' ' + sy(p.y).toFixed(1)).join(' ');
      const first = sx(run[0].x).toFixed(1), last = sx(run[run.length - 1].x).toFixed(1);
      nodes.push(svg('path', { class: 'area', d: line + ' L' + last + ' ' + base.toFixed(1) + ' L' + first + ' ' + base.toFixed(1) + ' Z' }));
      nodes.push(svg('path', { class: 'series', d: line }));
    }
    for (const p of runs.flat()) {
      const c = svg('circle', { class: 'pt', cx: sx(p.x), cy: sy(p.y), r });
      c.append(svg('title', {}, p.title));
      nodes.push(c);
    }
    return nodes;
  }

  // ---- summary ----
  function renderSummary(s) {
    state.summary = s;
    if (s && s.time_zone) setZone(s.time_zone);
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

  // ---- district usage ----
  function usageQuery(district, now) {
    const win = WINDOWS[state.resolution];
    const from = Math.floor((now - win.span) / win.step) * win.step;
    return '/districts/' + encodeURIComponent(district) + '/usage?from=' + from + '&to=' + (now + win.step) + '&resolution=' + state.resolution;
  }
  const usageOf = (rows) => rows.reduce((a, r) => a + r.usage_l, 0);

  /** The district with the most litres in the current window (ties: by name). */
  async function busiestDistrict(names, now) {
    const scored = await Promise.all(names.slice(0, MAX_AUTO_DISTRICTS).map(async (name) => {
      const rows = (await api(usageQuery(name, now))) || [];
      return { name, rows, litres: usageOf(rows) };
    }));
    scored.sort((a, b) => b.litres - a.litres || a.name.localeCompare(b.name));
    return scored[0];
  }

  function fillDistricts(names) {
    const select = $('district');
    if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
      select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
    }
  }

  /**
   * The district to show and its rows: the user's choice, else the busiest one,
   * re-picked while the picked one has no usage in the window.
   */
  async function chooseDistrict(names, now) {
    const asked = state.district;
    if (asked) {
      const rows = (await api(usageQuery(asked, now))) || [];
      if (state.districtSource === 'user' || rows.length) return { name: asked, rows };
    }
    return (await busiestDistrict(names, now)) || { name: '', rows: [] };
  }

  /** A token for "nothing the user can change has changed since": a stale answer is dropped. */
  const viewKey = () => [state.generation, state.district, state.resolution, state.districtSource].join('|');

  async function loadUsage() {
    const names = ((await api('/districts')) || []).map(String);
    fillDistricts(names);
    if (!names.includes(state.district)) {
      state.district = '';
      state.districtSource = 'auto';
    }
    const key = viewKey();
    const now = Date.now();
    const { name, rows } = await chooseDistrict(names, now);
    if (key !== viewKey()) return; // the user chose meanwhile: that call draws
    state.district = name;
    $('district').value = state.district;
    writeHash();
    const chart = $('district-chart');
    const win = WINDOWS[state.resolution];
    const opts = { kind: 'line', x0: now - win.span, x1: now, step: win.step, unit: state.resolution === 'hour' ? 'L per hour' : 'L per minute' };
    if (!state.district) {
      drawChart(chart, [], opts);
      $('usage-meta').textContent = '';
      return setEmpty('usage-empty', 'No district has usage yet: districts appear once meters report.');
    }
    const label = (ms) => (state.resolution === 'hour' ? dayHour(ms) : hhmm(ms));
    const points = rows.map((r) => ({
      x: r.start_ms,
      y: r.usage_l,
      title: label(r.start_ms) + ' · ' + int(r.usage_l) + ' L · ' + int(r.meters) + ' meters' + (r.p90_l != null ? ' · p90 ' + int(r.p90_l) + ' L/meter' : ''),
    }));
    const shown = drawChart(chart, points, opts);
    chart.setAttribute('aria-label', 'Usage of district ' + state.district + ', ' + win.label + ', ' + shown + ' points in ' + chart.dataset.segments + ' runs');
    if (!shown) {
      $('usage-meta').textContent = win.label;
      return setEmpty('usage-empty', 'No usage in district ' + state.district + ' in the ' + win.label.replace(', per', ' (per') + ')' + '. Try the hour view, or start the simulator.');
    }
    setEmpty('usage-empty', '');
    $('usage-meta').textContent = usageMeta(rows, win);
  }

  function usageMeta(rows, win) {
    const peak = rows.reduce((a, r) => (r.usage_l > a.usage_l ? r : a), rows[0]);
    const latest = rows.reduce((a, r) => (r.start_ms > a.start_ms ? r : a), rows[0]);
    const night = rows.map((r) => r.night_flow_lph).filter((v) => v != null);
    return win.label + ' · total ' + volume(usageOf(rows)) + ' · peak ' + int(peak.usage_l) + ' L at ' + hhmm(peak.start_ms) +
      ' · ' + int(latest.meters) + ' meters in latest window' + (night.length ? ' · min night flow ' + int(Math.min(...night)) + ' L/h' : '') +
      ' · a break in the line is a window without data';
  }

  // ---- water balance: the shown district's bulk-meter inflow against its consumption ----
  const dayLabel = (ms) => { const p = clock.parts(ms); return p.year + '-' + p.month + '-' + p.day; };
  const pct = (v) => (v == null ? '–' : v.toFixed(2) + ' %');
  const cell = (value, text) => h('td', { class: 'num', 'data-value': value == null ? '' : String(value) }, text);

  /** Shown only for a district whose bulk meters reported in the days shown (tenants with bulk_meters). */
  async function loadBalance() {
    const key = viewKey(), district = state.district, panel = $('balance-panel');
    if (!district) return void (panel.hidden = true);
    const now = Date.now();
    const b = await api('/districts/' + encodeURIComponent(district) + '/balance?resolution=day&from=' + (now - BALANCE_DAYS * 86400e3) + '&to=' + (now + 1));
    if (key !== viewKey()) return;
    const days = ((b && b.windows) || []).filter((w) => w.inflow_l != null);
    panel.hidden = !days.length;
    if (!days.length) return;
    $('balance-district').textContent = district;
    $('balance').tBodies[0].replaceChildren(...days.map((w) => {
      const bar = h('div', { class: 'meter-bar' });
      bar.style.width = (w.inflow_l ? Math.min(100, (100 * w.consumption_l) / w.inflow_l) : 0).toFixed(1) + '%';
      return h('tr', { 'data-day': dayLabel(w.start) },
        h('td', null, dayLabel(w.start)),
        cell(w.inflow_l, int(w.inflow_l)),
        cell(w.consumption_l, int(w.consumption_l)),
        cell(w.nrw_l, int(w.nrw_l)),
        cell(w.nrw_pct, pct(w.nrw_pct)),
        cell(w.night_flow_lph, int(w.night_flow_lph)),
        h('td', { class: 'barcol', title: 'consumption of the inflow' }, bar));
    }));
    const trend = b.night_flow_trend_lph_per_day;
    $('balance-meta').textContent = 'last ' + BALANCE_DAYS + ' days · non-revenue water = inflow − consumption (negative: customers registered more)' +
      (trend == null ? '' : ' · night flow trend ' + (trend > 0 ? '+' : '') + trend.toFixed(2) + ' L/h per day');
  }
  const loadDistrict = () => loadUsage().then(loadBalance);

  // ---- top consumers and open alerts ----
  async function loadTop() {
    const generation = state.generation;
    const rows = (await api('/top?limit=' + TOP_LIMIT)) || [];
    if (generation !== state.generation) return;
    const max = Math.max(1, ...rows.map((r) => r.usage_l));
    $('top').tBodies[0].replaceChildren(
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

  const rank = (p) => PRIORITY_RANK[p] ?? 9;

  async function loadAlerts() {
    const generation = state.generation;
    const rows = ((await api('/alerts?state=open&limit=' + ALERT_LIMIT)) || []).slice();
    if (generation !== state.generation) return;
    rows.sort((a, b) => rank(a.priority) - rank(b.priority) || b.at - a.at);
    $('alerts').replaceChildren(
      ...rows.map((a) =>
        h('li', { class: 'alert ' + (a.priority || ''), 'data-kind': a.kind, 'data-meter': a.meter, 'data-priority': a.priority },
          h('span', { class: 'prio' }, a.priority || '?'),
          h('span', null, h('span', { class: 'kind' }, humanKind(a.kind)), ' · ', meterLink(a.meter)),
          h('span', { class: 'when', title: fullTime(a.opened_at) }, ago(a.opened_at)),
          h('span', { class: 'detail' }, a.detail || ''))),
    );
    $('alerts-count').textContent = rows.length ? String(rows.length) : '';
    setEmpty('alerts-empty', rows.length ? '' : 'No open alerts. All clear.', true);
  }

  // ---- validation exceptions: the revenue-protection work queue ----
  const exceptionKey = (e) => e.meter + '@' + e.ts;

  async function loadExceptions() {
    const generation = state.generation;
    const rows = (await api('/exceptions?state=open&limit=' + EXCEPTION_LIMIT)) || [];
    if (generation !== state.generation) return;
    const open = new Set(rows.map(exceptionKey));
    for (const key of state.whys.keys()) if (!open.has(key)) state.whys.delete(key);
    $('exceptions').tBodies[0].replaceChildren(...rows.map(exceptionRow));
    $('exceptions-count').textContent = rows.length ? String(rows.length) : '';
    setEmpty('exceptions-empty', rows.length ? '' : 'No open exceptions: every read is billed or decided.', true);
  }

  function exceptionRow(e) {
    const key = exceptionKey(e);
    const why = h('input', { type: 'text', maxlength: '500', placeholder: 'e.g. field visit', 'aria-label': 'Why, for ' + e.meter + ' at ' + fullTime(e.ts) });
    why.value = state.whys.get(key) || '';
    why.addEventListener('input', () => state.whys.set(key, why.value));
    const button = (action, label) => h('button', { type: 'button', 'data-action': action, onclick: () => decide(e, action) }, label);
    // A register that went backwards is an exchange or a glitch, never usage.
    const actions = [
      e.reason === 'regression' ? null : button('accept', 'Accept'),
      button('confirm_exchange', 'Exchange'),
      button('reject', 'Reject'),
    ].filter(Boolean);
    return h('tr', { 'data-meter': e.meter, 'data-ts': String(e.ts), 'data-reason': e.reason },
      h('td', null, meterLink(e.meter)),
      h('td', { title: fullTime(e.ts) }, fullTime(e.ts)),
      h('td', { class: 'num' }, e.reg.toLocaleString('en-US')),
      h('td', null, EXCEPTION_REASONS[e.reason] || e.reason),
      h('td', null, why),
      h('td', { class: 'actions' }, ...actions));
  }

  async function decide(e, action) {
    const by = $('decider').value.trim();
    const status = $('exceptions-status');
    if (!by) {
      status.textContent = 'Say who decides first ("Decided by").';
      $('decider').focus();
      return;
    }
    localStorage.setItem('mf.decider', by);
    const why = state.whys.get(exceptionKey(e)) || '';
    try {
      const out = await api('/meters/' + encodeURIComponent(e.meter) + '/exceptions/' + e.ts, { action, by, why });
      status.textContent = e.meter + ' at ' + fullTime(e.ts) + ': ' + out.state.replace('_', ' ') + ' by ' + by + '.';
    } catch (err) {
      status.textContent = e.meter + ' at ' + fullTime(e.ts) + ': not decided: ' + err.message;
    }
    await loadExceptions().catch(report1);
  }

  // ---- device health: battery and signal ----
  const lowBattery = (v) => v.battery != null && v.battery <= LOW_BATTERY_PCT;
  const weakSignal = (v) => v.rssi != null && v.rssi <= WEAK_RSSI_DBM;
  /** A value with, when it is bad, a text badge (colour alone is not enough). */
  function health(text, bad, badge, what) {
    if (text == null) return h('span', { class: 'muted', title: what + ' not reported' }, '–');
    return h('span', { class: bad ? 'bad' : null, 'data-bad': bad ? 'true' : null },
      text, bad ? ' ' : null, bad ? h('span', { class: 'badge' }, badge) : null);
  }
  const batteryCell = (v) => health(v.battery == null ? null : v.battery + ' %', lowBattery(v), 'low battery', 'battery');
  const signalCell = (v) => health(v.rssi == null ? null : v.rssi + ' dBm', weakSignal(v), 'weak signal', 'signal');

  // ---- meter lists: silent meters and search ----
  function meterRow(v) {
    return h('tr', { 'data-meter': v.meter, class: v.meter === state.meter ? 'selected' : null },
      h('td', null, meterLink(v.meter)),
      h('td', null, v.district || '–'),
      h('td', { title: v.last_ts ? fullTime(v.last_ts) : 'never', 'data-ts': v.last_ts || null }, v.last_ts ? ago(v.last_ts) : 'never'),
      h('td', { class: 'num battery' }, batteryCell(v)),
      h('td', { class: 'num signal' }, signalCell(v)));
  }

  function renderMeterList(table, views, append) {
    const body = $(table).tBodies[0];
    const rows = views.map(meterRow);
    if (append) body.append(...rows);
    else body.replaceChildren(...rows);
    $(table).hidden = !body.rows.length;
    return body.rows.length;
  }

  async function loadSilent() {
    const limit = Math.max(SILENT_PAGE, state.silentShown);
    const asked = state.generation + '|' + state.silentFor;
    const page = await api('/meters?silent_for_s=' + state.silentFor + '&limit=' + limit);
    if (asked === state.generation + '|' + state.silentFor) showSilent(page, false);
  }

  async function moreSilent() {
    if (!state.silentNext) return;
    const asked = state.generation + '|' + state.silentFor;
    const page = await api('/meters?silent_for_s=' + state.silentFor + '&limit=' + SILENT_PAGE + '&after=' + encodeURIComponent(state.silentNext));
    if (asked === state.generation + '|' + state.silentFor) showSilent(page, true);
  }

  function showSilent(page, append) {
    state.silentShown = renderMeterList('silent', page.meters || [], append);
    state.silentNext = page.next || null;
    $('silent-more').hidden = !state.silentNext;
    $('silent-count').textContent = state.silentShown ? state.silentShown + (state.silentNext ? '+' : '') : '';
    const span = $('silent-for').selectedOptions[0].textContent;
    setEmpty('silent-empty', state.silentShown ? '' : 'Every meter has reported in the last ' + span + '.', true);
  }

  async function search(append) {
    const q = state.search.q, generation = state.generation;
    if (!q) return;
    const after = append && state.search.next ? '&after=' + encodeURIComponent(state.search.next) : '';
    const page = await api('/meters?q=' + encodeURIComponent(q) + '&limit=' + SEARCH_PAGE + after);
    if (q !== state.search.q || generation !== state.generation) return;
    const shown = renderMeterList('found', page.meters || [], append);
    state.search.next = page.next || null;
    $('found-more').hidden = !state.search.next;
    setEmpty('found-empty', shown ? '' : 'No meter id contains "' + q + '".');
  }

  // ---- one meter ----
  async function loadMeter() {
    const id = state.meter, generation = state.generation;
    $('meter-title').replaceChildren('Meter', ...(id ? [' ', h('span', { class: 'id' }, id)] : []));
    if (!id) {
      $('meter-detail').hidden = true;
      return setEmpty('meter-empty', 'Pick a meter in a list or an alert, or type its id.');
    }
    let view;
    try {
      view = await api('/meters/' + encodeURIComponent(id));
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) throw e;
      $('meter-detail').hidden = true;
      return setEmpty('meter-empty', e.message);
    }
    if (id !== state.meter || generation !== state.generation) return;
    const last = view.last_ts || Date.now();
    const period = state.summary && state.summary.day ? state.summary.day.slice(0, 7) : new Date(last).toISOString().slice(0, 7);
    const [readings, bill, episodes] = await Promise.all([
      api('/meters/' + encodeURIComponent(id) + '/readings?from=' + (last - METER_SPAN_MS) + '&to=' + (last + 1) + '&limit=2000'),
      api('/bills/' + period + '/' + encodeURIComponent(id)).catch((e) => {
        if (e.status === 404) return null;
        throw e;
      }),
      api('/alerts?state=all&meter=' + encodeURIComponent(id) + '&limit=' + HISTORY_LIMIT),
    ]);
    if (id !== state.meter || generation !== state.generation) return;
    setEmpty('meter-empty', '');
    $('meter-detail').hidden = false;
    renderFacts(view, bill, period);
    renderMeterChart(readings || [], last);
    renderHistory(id, episodes || []);
  }

  function renderFacts(view, bill, period) {
    const fact = (label, value, cls) => h('div', { class: cls || null }, h('dt', null, label), h('dd', null, value));
    const billText = bill ? money(bill.amount_cents, bill.currency) + (bill.final ? ' · final' : bill.estimated ? ' · estimated' : ' · so far') : 'no bill yet';
    $('meter-facts').replaceChildren(
      fact('Last reading · ' + (view.last_ts ? ago(view.last_ts) : 'never'), view.last_ts ? hhmmss(view.last_ts) : '–'),
      fact('District', view.district || '–'),
      fact('Size', view.size ? view.size.toUpperCase() : '–'),
      fact('Register', view.reg != null ? (view.reg / 1000).toLocaleString(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 }) + ' m³' : '–'),
      fact('Flow', view.flow != null ? int(view.flow) + ' L/h' : '–'),
      fact('Temperature', view.temp != null ? (view.temp / 10).toFixed(1) + ' °C' : '–'),
      fact('Quality', h('span', { class: 'q-' + view.quality }, view.quality || '–')),
      fact('Battery', batteryCell(view), 'battery'),
      fact('Signal', signalCell(view), 'signal'),
      fact('Today', int(view.today_l) + ' L'),
      fact('Period ' + period, bill ? volume(bill.usage_l) : '–'),
      fact('Bill ' + period, billText),
    );
  }

  function renderMeterChart(rows, last) {
    const points = rows.map((r) => ({
      x: r.ts,
      y: r.interval_l || 0,
      cls: r.quality !== 'actual' ? r.quality : '',
      title: hhmm(r.ts) + ' · ' + int(r.interval_l || 0) + ' L · flow ' + int(r.flow) + ' L/h · ' + r.quality,
    }));
    const step = rows.length > 1 ? Math.max(60e3, (rows[rows.length - 1].ts - rows[0].ts) / (rows.length - 1)) : 900e3;
    // Fit the time axis to the readings (1 to 24 h), so a young meter's few bars show.
    const x0 = rows.length ? Math.max(last - METER_SPAN_MS, Math.min(rows[0].ts - step, last - METER_MIN_SPAN_MS)) : last - METER_SPAN_MS;
    const shown = drawChart($('meter-chart'), points, { kind: 'bar', x0, x1: last + step / 2, step, unit: 'L per reading' });
    const total = rows.reduce((a, r) => a + (r.interval_l || 0), 0);
    $('meter-meta').textContent = shown
      ? 'litres per reading, up to 24 h before the newest · ' + shown + ' readings · ' + int(total) + ' L · yellow: estimated, orange: suspect'
      : 'no readings in the 24 h before the newest';
  }

  /**
   * The meter's alert episodes, newest first. Filtered here too: a server that does
   * not know `meter=` answers the tenant's alerts, and the note then says the list
   * is limited to the tenant's newest episodes.
   */
  function renderHistory(id, episodes) {
    const mine = episodes.filter((a) => a.meter === id).sort((a, b) => b.at - a.at);
    $('meter-history').replaceChildren(...mine.map((a) =>
      h('li', { class: 'alert ' + (a.priority || '') + ' ' + a.state, 'data-meter': a.meter, 'data-kind': a.kind, 'data-state': a.state },
        h('span', { class: 'prio' }, a.priority || '?'),
        h('span', null, h('span', { class: 'kind' }, humanKind(a.kind)), ' · ', h('span', { class: 'state' }, a.state)),
        h('span', { class: 'when', title: fullTime(a.at) }, ago(a.at)),
        h('span', { class: 'detail' }, 'opened ' + fullTime(a.opened_at) + (a.detail ? ' · ' + a.detail : '')))));
    setEmpty('history-empty', mine.length ? '' : 'No alerts for this meter.', true);
    const unfiltered = mine.length < episodes.length;
    $('history-note').hidden = !(unfiltered && episodes.length >= HISTORY_LIMIT);
    $('history-note').textContent = 'Searched the tenant\'s newest ' + HISTORY_LIMIT + ' alert episodes only.';
  }

  function selectMeter(id) {
    state.meter = id;
    $('meter').value = id;
    writeHash();
    for (const tr of document.querySelectorAll('tr[data-meter]')) tr.classList.toggle('selected', tr.dataset.meter === id);
    loadMeter().catch(report1);
    $('meter-title').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }

  // ---- address: #district=…&meter=… ----
  function writeHash() {
    const params = new URLSearchParams();
    if (state.district && state.districtSource === 'user') params.set('district', state.district);
    if (state.meter) params.set('meter', state.meter);
    const hash = params.toString();
    if (hash !== location.hash.slice(1)) history.replaceState(null, '', location.pathname + location.search + (hash ? '#' + hash : ''));
  }

  /** The remembered district of `tenant`: the address's, else this browser's last choice. */
  function rememberedDistrict(tenant) {
    return new URLSearchParams(location.hash.slice(1)).get('district') || localStorage.getItem('mf.district.' + tenant) || '';
  }

  function chooseDistrictByHand(name) {
    state.district = name;
    state.districtSource = 'user';
    localStorage.setItem('mf.district.' + state.tenant, name);
    loadDistrict().catch(report1);
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
      // The summary first: the meter's bill period and the time zone come from it.
      const first = await Promise.allSettled([loadSummary()]);
      const rest = await Promise.allSettled([loadDistrict(), loadTop(), loadAlerts(), loadExceptions(), loadSilent(), loadMeter()]);
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
    $('exceptions-count').textContent = '';
    $('exceptions-status').textContent = '';
    state.whys.clear();
    for (const t of ['top', 'exceptions', 'silent', 'found']) $(t).tBodies[0].replaceChildren();
    $('found').hidden = true;
    for (const b of ['silent-more', 'found-more']) $(b).hidden = true;
    $('silent-count').textContent = '';
    $('district').replaceChildren();
    $('district-chart').toggleAttribute('hidden', true);
    $('usage-meta').textContent = '';
    $('balance-panel').hidden = true;
    $('meter-detail').hidden = true;
    for (const id of ['usage-empty', 'alerts-empty', 'exceptions-empty', 'top-empty', 'silent-empty', 'found-empty']) setEmpty(id, '');
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
    state.district = rememberedDistrict(tenant);
    state.districtSource = state.district ? 'user' : 'auto';
    state.silentShown = 0;
    state.search = { q: '', next: null };
    localStorage.setItem('mf.tenant', tenant);
    if (token) localStorage.setItem('mf.token.' + tenant, token);
    else localStorage.removeItem('mf.token.' + tenant);
    clearPanels();
    refresh();
  }

  function listen() {
    $('tenant-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      openTenant($('tenant').value.trim(), $('token').value.trim());
    });
    $('meter-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('meter').value.trim();
      if (id) selectMeter(id);
    });
    $('district').addEventListener('change', (ev) => chooseDistrictByHand(ev.target.value));
    for (const r of document.querySelectorAll('input[name=res]')) {
      r.addEventListener('change', () => {
        state.resolution = r.value;
        loadUsage().catch(report1);
      });
    }
    $('silent-for').addEventListener('change', (ev) => {
      state.silentFor = Number(ev.target.value);
      state.silentShown = 0;
      loadSilent().catch(report1);
    });
    $('silent-more').addEventListener('click', () => moreSilent().catch(report1));
    $('search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.search = { q: $('search').value.trim(), next: null };
      search(false).catch(report1);
    });
    $('found-more').addEventListener('click', () => search(true).catch(report1));
    document.addEventListener('visibilitychange', () => document.hidden || refresh());
  }

  function init() {
    const params = new URLSearchParams(location.search);
    setZone(params.get('tz') || browserZone);
    const tenant = params.get('tenant') || localStorage.getItem('mf.tenant') || 'demo';
    const token = localStorage.getItem('mf.token.' + tenant) || '';
    $('tenant').value = tenant;
    $('token').value = token;
    $('decider').value = localStorage.getItem('mf.decider') || '';
    state.tenant = tenant;
    state.meter = new URLSearchParams(location.hash.slice(1)).get('meter') || '';
    $('meter').value = state.meter;
    state.silentFor = Number($('silent-for').value);
    listen();
    openTenant(tenant, token);
    setInterval(refresh, POLL_MS);
  }

  init();
})();

// Browser test of the meterflow dashboard (ingest/src/dashboard/): a real meterflow on
// free loopback ports with a temporary data directory, a simulated fleet and a
// leak-flagged uplink over MQTT, and Debian's Chromium driven by playwright-core.
// It checks that the summary, the district chart, the top list, the leak alert and the
// meter drill-down appear, that they UPDATE when more data arrives, that the page's
// "usage today" is exactly the litres of the stored readings whose interval lies in the
// tenant's local today, that an open validation exception can be decided from the
// page (who and why recorded), and that a tenant with an API token gets the "token
// needed" state until the token is entered. The fleet spans districts (north, south, east and
// the unassigned `default`), so the page must open on the busiest one and remember a
// choice; east's meters read every 15 minutes, so its minute chart has gaps that must
// stay gaps; the axes must sit on round times (in the tenant's zone) and round values;
// a meter that last reported 3 h before the test's now must be listed as silent; a
// meter reporting 5 % battery and -118 dBm must be marked low and weak; a meter's alert
// history must hold that meter's episodes only; the search must page. The page must
// log no console error (beyond the API's documented 401/404 answers, see below).
//
// Time comes in as a value: nothing here depends on the wall-clock hour, day or the
// machine's time zone. The test picks an instant (MF_TEST_CLOCK) and runs every process
// it drives on one shifted clock: meterflow and meterflow-sim under Debian's libfaketime
// (LD_PRELOAD, FAKETIME="+Ns" relative offset, monotonic clocks untouched), the page
// under playwright's clock (installed at the same instant, then flowing naturally), and
// what the test stamps itself (the hand-made uplinks' `ts`) from the same offset. The
// `demo` tenant lives in America/Chicago; the processes run with TZ=Asia/Kolkata and the
// browser in Asia/Kolkata, so neither UTC nor the machine's zone can stand in for the
// tenant's. The page learns the tenant's zone from the API (the summary's
// `time_zone`) and its time labels are checked in that zone.
//   MF_TEST_CLOCK  midday (default): 12:00 in the tenant's zone, today
//                  before-local-midnight / after-local-midnight: 23:55 / 00:20 there
//                  (after: the 40 minutes of readings straddle the tenant's midnight)
//                  before-utc-midnight / after-utc-midnight: the same around 00:00 UTC
//                  or an ISO-8601 instant (e.g. 2026-03-08T07:40:00Z) to replay one
//
// Builds nothing: it runs the debug binaries (`cargo build` first; scripts/test does).
//   MF_BIN          meterflow binary   (default $CARGO_TARGET_DIR or ./target, debug/meterflow)
//   MF_SIM_BIN      simulator binary   (default … debug/meterflow-sim)
//   CHROMIUM_BIN    browser            (default /usr/bin/chromium)
//   MF_FAKETIME_LIB libfaketime        (default /usr/lib/<arch>-linux-gnu/faketime/libfaketime.so.1,
//                                       Debian package `faketime`)
// A screenshot of the tenant's page is saved as dashboard-test/output/dashboard-<clock>.png
// (one per MF_TEST_CLOCK value).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { wallClock, assertRoundTimeAxis, assertRoundValueAxis, runsOf } from './checks.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');
const TARGET = path.resolve(REPO, process.env.CARGO_TARGET_DIR || 'target');
const MF_BIN = process.env.MF_BIN || path.join(TARGET, 'debug', 'meterflow');
const SIM_BIN = process.env.MF_SIM_BIN || path.join(TARGET, 'debug', 'meterflow-sim');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const FAKETIME_LIB = process.env.MF_FAKETIME_LIB || findFaketime();
const OUTPUT = path.join(HERE, 'output');
/** The whole test, start to cleanup. */
const TEST_TIMEOUT_MS = 60_000;
/** How long the page gets to show something the API already has: a poll is 3 s. */
const UI_TIMEOUT_MS = 12_000;
const TOKEN = 'dashboard-test-token';
/** The `demo` tenant's zone (its tariff's `time_zone`): not UTC, with DST. */
const TENANT_ZONE = 'America/Chicago';
/** The zone of the "machine": the processes' TZ and the browser's. Neither UTC nor the tenant's. */
const MACHINE_ZONE = 'Asia/Kolkata';
const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;

const run = promisify(execFile);
const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-dashboard-'));
let browserContext;

after(async () => {
  if (browserContext) await browserContext.close().catch(() => {});
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

function findFaketime() {
  const candidates = fs.readdirSync('/usr/lib').filter((d) => d.endsWith('-linux-gnu'))
    .map((d) => path.join('/usr/lib', d, 'faketime', 'libfaketime.so.1'));
  return candidates.find((f) => fs.existsSync(f)) || '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
}

// ---- the test's clock ---------------------------------------------------------------

/** The instant at wall time y-m-d hh:mm in `zone` (days may overflow: d + 1 is the next day). */
function zonedInstant(zone, y, m, d, hh, mm) {
  const wall = Date.UTC(y, m - 1, d, hh, mm);
  const offsetAt = (ms) => {
    const w = wallClock(zone, ms);
    return Date.UTC(w.y, w.m - 1, w.d, w.hh, w.mm, w.ss) - Math.floor(ms / 1000) * 1000;
  };
  const guess = wall - offsetAt(wall);
  return wall - offsetAt(guess);
}

/** The local day of `zone` containing `ms`: its label (yyyy-mm-dd) and [start, end). */
function localDay(zone, ms) {
  const { y, m, d } = wallClock(zone, ms);
  const pad = (n) => String(n).padStart(2, '0');
  return { label: `${y}-${pad(m)}-${pad(d)}`, start: zonedInstant(zone, y, m, d, 0, 0), end: zonedInstant(zone, y, m, d + 1, 0, 0) };
}

/** The instant MF_TEST_CLOCK names, on today's date (of the real clock) in its zone. */
function testInstant(name) {
  const at = (zone, hh, mm) => {
    const { y, m, d } = wallClock(zone, Date.now());
    return zonedInstant(zone, y, m, d, hh, mm);
  };
  const variants = {
    'midday': () => at(TENANT_ZONE, 12, 0),
    'before-local-midnight': () => at(TENANT_ZONE, 23, 55),
    'after-local-midnight': () => at(TENANT_ZONE, 0, 20),
    'before-utc-midnight': () => at('UTC', 23, 55),
    'after-utc-midnight': () => at('UTC', 0, 20),
  };
  if (variants[name]) return variants[name]();
  const instant = Date.parse(name);
  assert.ok(/^\d{4}-\d{2}-\d{2}T/.test(name) && Number.isFinite(instant),
    `MF_TEST_CLOCK=${name}: use ${Object.keys(variants).join(', ')} or an ISO-8601 instant`);
  return instant;
}

const CLOCK_NAME = process.env.MF_TEST_CLOCK || 'midday';
/** Whole seconds: libfaketime's offset and ours are then the same number. */
const OFFSET_S = Math.ceil((testInstant(CLOCK_NAME) - Date.now()) / 1000);
/** Now on the test's clock: the real clock shifted by OFFSET_S. */
const now = () => Date.now() + OFFSET_S * 1000;

/** Environment of a process on the test's clock, in the machine's zone. */
function clockEnv() {
  return {
    ...process.env,
    LD_PRELOAD: [FAKETIME_LIB, process.env.LD_PRELOAD].filter(Boolean).join(' '),
    FAKETIME: `${OFFSET_S >= 0 ? '+' : ''}${OFFSET_S}s`,
    FAKETIME_DONT_FAKE_MONOTONIC: '1',
    TZ: MACHINE_ZONE,
  };
}

const iso = (ms) => new Date(ms).toISOString();
const localIso = (zone, ms) => {
  const w = wallClock(zone, ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${w.y}-${pad(w.m)}-${pad(w.d)} ${pad(w.hh)}:${pad(w.mm)} ${zone}`;
};

// ---- the service --------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function startMeterflow() {
  for (const [bin, what] of [[MF_BIN, 'MF_BIN'], [SIM_BIN, 'MF_SIM_BIN'], [CHROMIUM, 'CHROMIUM_BIN'],
    [FAKETIME_LIB, 'MF_FAKETIME_LIB (Debian package faketime)']]) {
    assert.ok(fs.existsSync(bin), `${bin} is missing: build it (cargo build --workspace), install it, or set ${what}`);
  }
  const [mqtt, http] = [await freePort(), await freePort()];
  const config = path.join(tmp, 'meterflow.toml');
  // `demo` as built in (anonymous meters, no token) plus a tenant with an API token;
  // `demo` keeps its days in America/Chicago and has DN40 meters (the simulator's use
  // follows a UTC-hour curve that is nearly dry at night for household meters; DN40s
  // use litres in every hour but 02:00-04:00 UTC, so every clock variant has usage in
  // the tenant's today). Readings may lead the clock by 10 min instead of 5, for the
  // fast meter (sendFast). Meters are assigned to districts (DISTRICTS). District rows, top lists and summaries flushed (and timers
  // swept, which flushes them once traffic stops) every second instead of every
  // minute, so the page can show them and their updates within the test's budget.
  fs.writeFileSync(config, [
    '[[tenants]]', 'id = "demo"', '',
    '[[tenants]]', 'id = "locked"', `api_token = "${TOKEN}"`, '',
    '[limits]', `max_clock_skew_ms = ${10 * MINUTE_MS}`, '',
    '[pipeline]', 'sweep_interval_s = 1', '',
    '[processors.analytics]', 'flush_interval_ms = 1000', '',
    '[processors.tenants.demo]', 'default_meter_size = "dn40"', '',
    '[processors.tenants.demo.districts]', ...Object.entries(DISTRICTS).map(([meter, d]) => `${meter} = "${d}"`), '',
    '[processors.tenants.demo.bulk_meters]', `${BULK_METER} = "north"`, '',
    '[processors.tenants.demo.meter_sizes]', `${BULK_METER} = "dn150"`, '',
    '[processors.tenants.demo.tariff]', `time_zone = "${TENANT_ZONE}"`, '',
  ].join('\n'));
  const logPath = path.join(tmp, 'meterflow.log');
  const log = fs.openSync(logPath, 'w');
  const child = spawn(MF_BIN, ['run', '--config', config, '--mqtt', `127.0.0.1:${mqtt}`, '--http', `127.0.0.1:${http}`, '--data', path.join(tmp, 'data')], {
    env: { ...clockEnv(), MF_SHARDS: '2' },
    stdio: ['ignore', 'ignore', log],
  });
  children.push(child);
  const service = {
    mqtt,
    url: `http://127.0.0.1:${http}`,
    logTail: () => fs.readFileSync(logPath, 'utf8').split('\n').slice(-30).join('\n'),
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    assert.equal(child.exitCode, null, `meterflow exited early:\n${service.logTail()}`);
    const ready = await fetch(service.url + '/readyz').then((r) => r.ok, () => false);
    if (ready) return service;
    assert.ok(Date.now() < deadline, `meterflow not ready in 20 s:\n${service.logTail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const meterId = (index) => 'm' + String(index).padStart(6, '0');

/**
 * Districts of the `demo` tenant's meters: north has the most simulated meters when the
 * page opens (so it is the busiest), south gains six later, east's two meters read
 * every 15 minutes (sendSparse); the hand-made meters (leak, fast, silent, low battery)
 * stay in `default`.
 */
const DISTRICTS = Object.fromEntries([
  ...[0, 1, 2, 3, 4, 5, 6, 7].map((i) => [meterId(i), 'north']),
  ...[8, 9, 10, 11, 100, 101, 102, 103, 104, 105].map((i) => [meterId(i), 'south']),
  ['gap01', 'east'], ['gap02', 'east'],
]);

/** The bulk (inflow) meter feeding north: the water balance's inflow (sendInflow). */
const BULK_METER = 'bulk01';
/** Litres bulk01 measures (in 8 minutes, within DN150's overload flow): north's inflow today. */
const INFLOW_L = 30_000;

/** A fleet of `meters` DN40 meters from index `first`, one reading a minute for 40 min up to now. */
async function simulate(service, first, meters) {
  const { stdout } = await run(SIM_BIN, [
    '--mqtt', `127.0.0.1:${service.mqtt}`, '--tenant', 'demo',
    '--first-meter', String(first), '--meters', String(meters), '--sizes', 'dn40=1',
    '--messages-per-meter', '10', '--readings-per-message', '4', '--interval-ms', '60000',
    '--seed', String(first + 1), '--timeout', '20', '--json',
  ], { timeout: 25_000, env: clockEnv() });
  const report = JSON.parse(stdout);
  assert.equal(report.unacked, 0, `simulator: ${stdout}\n${service.logTail()}`);
  return Array.from({ length: meters }, (_, i) => meterId(first + i));
}

/** Publishes one uplink of `meter` (QoS 1: mosquitto_pub returns once it is stored). */
async function publish(service, meter, uplink) {
  await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(service.mqtt), '-i', `demo.${meter}`,
    '-t', `meters/demo/${meter}/up`, '-q', '1', '-m', JSON.stringify(uplink)], { timeout: 10_000 });
}

/** A device-flagged leak from `meter`, as a meter's firmware would send it (on the test's clock). */
async function sendLeak(service, meter) {
  await publish(service, meter, {
    v: 1, seq: 1, readings: [{ ts: now() - 60_000, reg: 81_250, rev: 0, flow: 95 }], flags: ['leak'],
  });
}

/**
 * A meter that reads every 15 minutes: five reads from 75 to 15 min before now, 10 L
 * apart (little enough that east is never the busiest district, even in the
 * simulator's quiet hours). Its district's minute chart has a row every 15th minute
 * and nothing between.
 */
async function sendSparse(service, meter) {
  const readings = [5, 4, 3, 2, 1].map((k, i) => ({ ts: now() - k * 15 * MINUTE_MS, reg: 20_000 + 10 * i, flow: 60 }));
  await publish(service, meter, { v: 1, seq: 1, readings });
}

/** A meter that last reported 3 h before now (the test's now), battery and signal fine. */
async function sendSilent(service, meter) {
  const readings = [{ ts: now() - 3 * HOUR_MS - 15 * MINUTE_MS, reg: 7_000, flow: 0 }, { ts: now() - 3 * HOUR_MS, reg: 7_030, flow: 120 }];
  await publish(service, meter, { v: 1, seq: 1, readings, battery: 80, rssi: -95 });
}

/** A meter reporting now with an almost empty battery (5 %) and a weak radio (-118 dBm). */
async function sendLowBattery(service, meter) {
  const readings = [{ ts: now() - 2 * MINUTE_MS, reg: 3_000, flow: 0 }, { ts: now() - MINUTE_MS, reg: 3_004, flow: 240 }];
  await publish(service, meter, { v: 1, seq: 1, readings, battery: 5, rssi: -118 });
}

/**
 * A meter whose clock runs 6 minutes fast: two readings, 10 min apart, the newer one
 * stamped 6 min after now, 40 L between them. At 23:55 that interval is the tenant's
 * tomorrow, which must not become "today" before midnight.
 */
async function sendFast(service, meter) {
  await publish(service, meter, {
    v: 1, seq: 1, readings: [{ ts: now() - 4 * MINUTE_MS, reg: 50_000, flow: 0 }, { ts: now() + 6 * MINUTE_MS, reg: 50_040, flow: 400 }],
  });
}

/**
 * A register that jumps 390,000 L in a minute, beyond a DN40's 20,000 L/h: the second
 * read is a validation exception (implausible jump), kept out of the bills. The meter
 * is no part of the usage checks (its only interval is suspect).
 */
async function sendJump(service, meter) {
  const readings = [{ ts: now() - 4 * MINUTE_MS, reg: 10_000, flow: 0 }, { ts: now() - 3 * MINUTE_MS, reg: 400_000, flow: 0 }];
  await publish(service, meter, { v: 1, seq: 1, readings });
}

/** North's inflow: two reads of the bulk meter, 10 and 2 minutes before now, INFLOW_L apart (always within today). */
async function sendInflow(service) {
  const readings = [{ ts: now() - 10 * MINUTE_MS, reg: 1_000_000, flow: 0 }, { ts: now() - 2 * MINUTE_MS, reg: 1_000_000 + INFLOW_L, flow: 0 }];
  await publish(service, BULK_METER, { v: 1, seq: 1, readings });
}

async function api(service, path, token) {
  const res = await fetch(service.url + '/api/v1/tenants/' + path, token ? { headers: { Authorization: 'Bearer ' + token } } : {});
  assert.equal(res.status, 200, `GET ${path}: ${await res.clone().text()}`);
  return res.json();
}

/** Retries `check` (which asserts) until it passes or UI_TIMEOUT_MS is over; then its last failure. */
async function eventually(check) {
  const deadline = Date.now() + UI_TIMEOUT_MS;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() >= deadline) throw e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Waits until the API reports `predicate(summary)`: the data is in before the page is judged. */
async function summaryWhere(service, predicate, what) {
  const deadline = Date.now() + UI_TIMEOUT_MS;
  for (;;) {
    const summary = await api(service, 'demo/summary');
    if (predicate(summary)) return summary;
    assert.ok(Date.now() < deadline, `API summary never had ${what}: ${JSON.stringify(summary)}\n${service.logTail()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Litres per meter of the stored readings whose interval belongs to `day`: an
 * interval's litres count in the day containing `ts - 1 ms` (ARCHITECTURE.md,
 * departure 13). Suspect rows are stored but never counted (processors/src/analytics.rs).
 */
async function storedLitres(service, meters, day) {
  const litres = {};
  for (const meter of meters) {
    const rows = await api(service, `demo/meters/${meter}/readings?from=${day.start - HOUR_MS}&to=${day.end + HOUR_MS}`);
    litres[meter] = rows
      .filter((r) => r.quality !== 'suspect' && r.interval_l != null && r.ts - 1 >= day.start && r.ts - 1 < day.end)
      .reduce((sum, r) => sum + r.interval_l, 0);
  }
  return litres;
}
const total = (litres) => Object.values(litres).reduce((a, b) => a + b, 0);

const numberOf = (page, id) => page.$eval('#' + id, (el) => Number(el.dataset.value || NaN));

/** Minute rows of `district` in the district chart's window (the last 2 h) on the test's clock. */
const minuteRows = (service, district) =>
  api(service, `demo/districts/${district}/usage?from=${Math.floor((now() - 2 * HOUR_MS) / MINUTE_MS) * MINUTE_MS}&to=${now() + MINUTE_MS}&resolution=minute`);

/** The district with the most litres in the chart's window (ties: by name), as the page picks it. */
async function busiestDistrict(service) {
  const names = await api(service, 'demo/districts');
  const scored = await Promise.all(names.map(async (name) => ({ name, litres: (await minuteRows(service, name)).reduce((a, r) => a + r.usage_l, 0) })));
  scored.sort((a, b) => b.litres - a.litres || a.name.localeCompare(b.name));
  return scored;
}

/** Meter ids of the rows of a meter table on the page. */
const tableMeters = (page, table) => page.$$eval(`#${table} tbody tr`, (rows) => rows.map((r) => r.dataset.meter));

/** A file name for this run's screenshot: the clock's name, or the ISO instant without colons. */
const screenshotName = () => `dashboard-${CLOCK_NAME.replace(/[^A-Za-z0-9-]/g, '-')}.png`;

test(`the dashboard shows a live tenant and keeps up with new data (clock: ${CLOCK_NAME})`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const startedAt = now();
  /** The tenant's local today: the test stays within it (the variants leave minutes to spare). */
  const today = localDay(TENANT_ZONE, startedAt);
  t.diagnostic(`clock ${CLOCK_NAME}: ${iso(startedAt)} = ${localIso(TENANT_ZONE, startedAt)} = ${localIso(MACHINE_ZONE, startedAt)}; FAKETIME=${clockEnv().FAKETIME}`);
  const service = await startMeterflow();
  const index = await fetch(service.url + '/');
  assert.equal(index.status, 200, 'GET / must serve the dashboard: is meterflow_ingest::dashboard::routes() merged into the HTTP router?');
  assert.match(index.headers.get('content-security-policy') || '', /default-src 'self'/);
  const meters = await simulate(service, 0, 12);
  await sendLeak(service, 'leak01');
  await sendSparse(service, 'gap01');
  await sendSparse(service, 'gap02');
  await sendSilent(service, 'silent01');
  await sendLowBattery(service, 'lowbat01');
  await sendInflow(service);
  await sendJump(service, 'jump01');
  meters.push('leak01', 'gap01', 'gap02', 'silent01', 'lowbat01');
  const before = await summaryWhere(service, (s) => s.meters_reporting >= 12 && s.alerts_open >= 2, '12 meters, a leak and a low battery');
  // Every district's minute rows are flushed before the page judges which is busiest.
  await eventually(async () => {
    for (const district of ['north', 'south', 'east']) {
      assert.ok((await minuteRows(service, district)).length > 0, `no minute rows for ${district} yet`);
    }
    assert.equal((await minuteRows(service, 'east')).length, 4, 'east: four 15-minute intervals');
  });

  // Every process is on the test's clock: meterflow stamps receipt times, the simulator
  // stamps readings (its newest is one interval or less before its now).
  const [leakRow] = await api(service, 'demo/meters/leak01/readings');
  assert.ok(Math.abs(leakRow.received_at - now()) < 30_000,
    `meterflow's clock is not the test's (libfaketime not applied?): received_at ${iso(leakRow.received_at)}, test clock ${iso(now())}`);
  const simRows = await api(service, `demo/meters/${meters[0]}/readings`);
  const newest = simRows[simRows.length - 1].ts;
  assert.ok(newest <= now() && newest > startedAt - 3 * MINUTE_MS,
    `the simulator's clock is not the test's (libfaketime not applied?): newest reading ${iso(newest)}, test clock started ${iso(startedAt)}`);

  browserContext = await chromium.launchPersistentContext(path.join(tmp, 'chromium'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 1000 },
    timezoneId: MACHINE_ZONE,
  });
  // The page's clock starts at the test's now and then flows naturally (its polling
  // timers fire as usual); installed before the page loads.
  await browserContext.clock.install({ time: now() });
  const page = browserContext.pages()[0] || (await browserContext.newPage());
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // Console errors. The browser itself logs an API answer of 4xx as "Failed to load
  // resource"; the page asks for a meter's bill, which is a 404 until the meter has one
  // (leak01, one reading, has none). Those are the only ones allowed here; the token
  // phase below allows the 401s it provokes.
  const consoleErrors = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const url = msg.location().url || '';
    if (/Failed to load resource.*404/.test(msg.text()) && url.includes('/bills/')) return;
    consoleErrors.push(`${msg.text()} (${url})`);
  });
  // Offline: the page asks nothing of any other origin (no CDN, no web font).
  const foreign = [];
  page.on('request', (req) => {
    if (!req.url().startsWith(service.url + '/') && !req.url().startsWith('data:')) foreign.push(req.url());
  });
  // No zone in the address: the page takes the tenant's from the API.
  const pageUrl = `${service.url}/`;
  await page.goto(pageUrl);
  const pageNow = await page.evaluate(() => Date.now());
  assert.ok(Math.abs(pageNow - now()) < 10_000, `the page's clock is not the test's: ${iso(pageNow)} vs ${iso(now())}`);
  const wait = (fn, arg) => page.waitForFunction(fn, arg, { timeout: UI_TIMEOUT_MS });

  // Summary: the page shows what the API says.
  await wait((n) => Number(document.getElementById('kpi-meters').dataset.value) >= n, before.meters_reporting);
  assert.ok((await numberOf(page, 'kpi-usage')) > 0, 'usage today is shown and positive');
  assert.ok((await numberOf(page, 'kpi-alerts')) >= 1, 'open alerts counted');
  assert.ok(await page.isHidden('#empty'), 'no "no data yet" hint once meters report');
  assert.ok(await page.isHidden('#banner'), 'no error banner');
  assert.match(await page.innerText('footer'), new RegExp(`times in ${TENANT_ZONE}`));
  // Every control has an accessible name: a <label for>, aria-label or its own text.
  const unnamed = await page.$$eval('input, select, button', (els) => els
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map((el) => el.outerHTML));
  assert.deepEqual(unnamed, [], 'controls without a label');

  // District chart: opens on the busiest district (not the empty `default`), an SVG
  // with data points, minute resolution by default.
  await page.waitForSelector('#district-chart circle.pt', { timeout: UI_TIMEOUT_MS });
  await eventually(async () => {
    const ranked = await busiestDistrict(service);
    assert.notEqual(ranked[0].name, 'default', `the busiest district is a real one: ${JSON.stringify(ranked)}`);
    assert.equal(await page.$eval('#district', (s) => s.value), ranked[0].name, `the page opens on the busiest district: ${JSON.stringify(ranked)}`);
  });
  const points = await page.$$eval('#district-chart circle.pt', (c) => c.length);
  assert.ok(points >= 5, `minute chart has ${points} points for 40 min of readings`);
  assert.equal(await page.$eval('#district-chart', (c) => c.dataset.segments), '1', 'a district reading every minute is one unbroken line');

  // Axes: round times in the tenant's zone, round values with units.
  assert.equal(await assertRoundTimeAxis(page, 'district-chart', TENANT_ZONE), 15, 'two hours: a label every 15 min');
  await assertRoundValueAxis(page, 'district-chart');

  // The hour view answers too (rows or its empty state) on round hours, then back to minutes.
  await page.click('label[for="res-hour"]');
  await wait(() => document.getElementById('usage-meta').textContent.startsWith('last 48 h'));
  assert.equal(await assertRoundTimeAxis(page, 'district-chart', TENANT_ZONE), 360, 'two days: a label every 6 h');
  await page.click('label[for="res-minute"]');
  await page.waitForSelector('#district-chart circle.pt', { timeout: UI_TIMEOUT_MS });

  // A district read every 15 minutes: its minute chart breaks at every minute without
  // a row (one run per row here), never joining the reads into a continuous flow.
  await page.selectOption('#district', 'east');
  await wait(() => /district east,/.test(document.getElementById('district-chart').getAttribute('aria-label')));
  const eastRows = await minuteRows(service, 'east');
  const runs = runsOf(eastRows, MINUTE_MS);
  assert.ok(runs >= 2, `east's rows have gaps: ${JSON.stringify(eastRows.map((r) => iso(r.start_ms)))}`);
  assert.equal(await page.$$eval('#district-chart path.series', (p) => p.length), runs, 'one line per run of consecutive minutes');
  assert.equal(await page.$$eval('#district-chart circle.pt', (c) => c.length), eastRows.length, 'a point per row');

  // The choice is remembered: in the address (a reload keeps it) and in this browser
  // (the page opened afresh, without the address's hash, keeps it too).
  assert.match(await page.evaluate(() => location.hash), /district=east/);
  await page.reload();
  await wait(() => /district east,/.test(document.getElementById('district-chart').getAttribute('aria-label') || ''));
  await page.goto(pageUrl);
  await wait(() => /district east,/.test(document.getElementById('district-chart').getAttribute('aria-label') || ''));
  assert.equal(await page.$eval('#district', (s) => s.value), 'east');
  // East has no bulk meter: no water balance.
  await page.waitForSelector('#balance-panel', { state: 'hidden', timeout: UI_TIMEOUT_MS });
  await page.selectOption('#district', 'north');
  await page.waitForSelector('#district-chart circle.pt', { timeout: UI_TIMEOUT_MS });

  // North's water balance: today's inflow is exactly what bulk01 measured, the
  // consumption north's customers' litres of the day (the district's day row, without
  // the bulk meter), non-revenue water their difference, in litres and % of the inflow.
  const todayRow = `#balance tbody tr[data-day="${today.label}"]`;
  await page.waitForSelector(todayRow, { timeout: UI_TIMEOUT_MS });
  await eventually(async () => {
    const [usage] = await api(service, `demo/districts/north/usage?resolution=day&from=${today.start}&to=${today.start + 1}`);
    const shown = await page.$$eval(`${todayRow} td.num`, (tds) => tds.map((td) => td.dataset.value));
    const nrw = INFLOW_L - usage.usage_l;
    const nrwPct = Math.round((nrw * 100 / INFLOW_L) * 100) / 100;
    assert.deepEqual(shown, [String(INFLOW_L), String(usage.usage_l), String(nrw), String(nrwPct), ''],
      `inflow, consumption, NRW L, NRW %, night flow (none: no read in the night) for ${today.label}`);
    assert.equal(await page.$eval(`${todayRow} td:nth-child(5)`, (td) => td.textContent), nrwPct.toFixed(2) + ' %');
  });
  assert.equal(await page.$eval('#balance-district', (e) => e.textContent), 'north');

  // The leak alert, with its priority, and the top consumers.
  const leak = await page.waitForSelector('#alerts li.alert[data-kind="leak"][data-meter="leak01"]', { timeout: UI_TIMEOUT_MS });
  assert.equal(await leak.getAttribute('data-priority'), 'high');
  assert.match(await leak.innerText(), /Leak/);
  await page.waitForSelector('#top tbody tr', { timeout: UI_TIMEOUT_MS });
  const topMeters = await page.$$eval('#top tbody tr', (rows) => rows.map((r) => r.dataset.meter));
  const top = await api(service, 'demo/top?limit=10');
  assert.deepEqual(topMeters, top.map((e) => e.meter), 'top list in the API order');

  // The validation exceptions: jump01's jump waits for a decision. The operator
  // rejects it, saying who and why; the row leaves the open list and the decision is
  // recorded as typed.
  const jumpRow = '#exceptions tr[data-meter="jump01"]';
  await page.waitForSelector(jumpRow, { timeout: UI_TIMEOUT_MS });
  assert.match(await page.$eval(jumpRow, (r) => r.innerText), /implausible jump/);
  assert.equal(await page.$$eval(jumpRow + ' button[data-action="accept"]', (b) => b.length), 1, 'a jump can be accepted');
  await page.fill('#decider', 'night shift');
  await page.fill(jumpRow + ' input', 'register fault, read by hand');
  await page.click(jumpRow + ' button[data-action="reject"]');
  await wait(() => !document.querySelector('#exceptions tr[data-meter="jump01"]') &&
    /jump01 .*rejected by night shift/.test(document.getElementById('exceptions-status').textContent));
  const rejected = (await api(service, 'demo/exceptions?state=rejected')).filter((e) => e.meter === 'jump01');
  assert.equal(rejected.length, 1, JSON.stringify(rejected));
  assert.equal(rejected[0].decision.by, 'night shift');
  assert.equal(rejected[0].decision.why, 'register fault, read by hand');

  // Drill-down: click the biggest consumer.
  await page.click('#top tbody tr:first-child button');
  await page.waitForSelector('#meter-chart rect.bar', { state: 'attached', timeout: UI_TIMEOUT_MS });
  const facts = await page.innerText('#meter-facts');
  assert.match(facts, /QUALITY\s+actual/i);
  assert.match(facts, /BILL \d{4}-\d{2}/i);
  assert.match(facts, new RegExp(`DISTRICT\\s+${DISTRICTS[topMeters[0]]}`, 'i'));
  assert.equal(await page.$eval('#meter-title .id', (e) => e.textContent), topMeters[0]);
  await assertRoundTimeAxis(page, 'meter-chart', TENANT_ZONE);
  await assertRoundValueAxis(page, 'meter-chart');

  // A meter's alert history: click the leak in the open alerts; the history holds
  // that meter's episodes, all of them, and no other meter's (the page filters by
  // meter whether or not the API does).
  await page.click('#alerts li.alert[data-meter="leak01"] button');
  await wait(() => document.querySelector('#meter-title .id')?.textContent === 'leak01' &&
    document.querySelectorAll('#meter-history li').length > 0);
  const history = await page.$$eval('#meter-history li', (l) => l.map((e) => [e.dataset.meter, e.dataset.kind, e.dataset.state]));
  const episodes = (await api(service, 'demo/alerts?state=all&limit=1000')).filter((a) => a.meter === 'leak01');
  assert.deepEqual(history.map(([m]) => m), episodes.map(() => 'leak01'), `leak01's history only: ${JSON.stringify(history)}`);
  assert.ok(history.some(([, kind, state]) => kind === 'leak' && state === 'opened'), `the open leak in leak01's history: ${JSON.stringify(history)}`);

  // Silent meters: silent01 reported 3 h before the test's now; no other meter is
  // silent for an hour. Six hours of silence: none.
  await page.waitForSelector('#silent tbody tr[data-meter="silent01"]', { timeout: UI_TIMEOUT_MS });
  const silent = await api(service, 'demo/meters?silent_for_s=3600&limit=50');
  assert.deepEqual(await tableMeters(page, 'silent'), silent.meters.map((m) => m.meter));
  assert.deepEqual(silent.meters.map((m) => m.meter), ['silent01'], 'only silent01 is silent for an hour');
  const silentRow = await page.$$eval('#silent tbody tr[data-meter="silent01"] td', (tds) => tds.map((td) => td.innerText.trim()));
  assert.deepEqual(silentRow, ['silent01', 'default', '3 h ago', '80 %', '-95 dBm'], 'meter, district, last reading, battery, signal');
  assert.equal(await page.$$eval('#silent [data-bad]', (b) => b.length), 0, 'a healthy battery and signal are not marked');
  await page.selectOption('#silent-for', '21600');
  await page.waitForSelector('#silent-empty:not([hidden])', { timeout: UI_TIMEOUT_MS });
  assert.deepEqual(await tableMeters(page, 'silent'), []);
  await page.selectOption('#silent-for', '3600');
  await page.waitForSelector('#silent tbody tr[data-meter="silent01"]', { timeout: UI_TIMEOUT_MS });

  // Search, a page at a time: m0000 matches the twelve first simulated meters.
  await page.fill('#search', 'm0000');
  await page.click('#search-form button');
  await wait(() => document.querySelectorAll('#found tbody tr').length === 10);
  assert.ok(await page.isVisible('#found-more'), 'a "more" button while there are more');
  await page.click('#found-more');
  await wait(() => document.querySelectorAll('#found tbody tr').length === 12);
  assert.ok(await page.isHidden('#found-more'), 'no "more" button on the last page');
  assert.deepEqual(await tableMeters(page, 'found'), meters.filter((m) => m.includes('m0000')).sort());

  // Battery and signal: low and weak are marked in words, in the list and the meter.
  await page.fill('#search', 'lowbat');
  await page.click('#search-form button');
  await page.waitForSelector('#found tbody tr[data-meter="lowbat01"]', { timeout: UI_TIMEOUT_MS });
  const lowRow = await page.$$eval('#found tbody tr[data-meter="lowbat01"] td', (tds) => tds.map((td) => [td.textContent.replace(/\s+/g, ' ').trim(), !!td.querySelector('[data-bad]')]));
  assert.deepEqual(lowRow.slice(3), [['5 % low battery', true], ['-118 dBm weak signal', true]], JSON.stringify(lowRow));
  await page.click('#found tbody tr[data-meter="lowbat01"] button');
  await wait(() => document.querySelector('#meter-title .id')?.textContent === 'lowbat01' &&
    !!document.querySelector('#meter-facts .battery [data-bad]'));
  assert.match(await page.textContent('#meter-facts .battery dd'), /^5 % low battery$/);
  assert.match(await page.textContent('#meter-facts .signal dd'), /^-118 dBm weak signal$/);
  await page.waitForSelector('#meter-history li[data-kind="low_battery"]', { timeout: UI_TIMEOUT_MS });
  // A young meter (two reads a minute apart) still gets a time axis, on round times.
  await page.waitForSelector('#meter-chart rect.bar', { state: 'attached', timeout: UI_TIMEOUT_MS });
  await assertRoundTimeAxis(page, 'meter-chart', TENANT_ZONE);

  // Live updates: more meters, another leak and a meter with a fast clock show up
  // without a reload (the fast one, before midnight, in tomorrow's figures only).
  meters.push(...(await simulate(service, 100, 6)));
  await sendLeak(service, 'leak02');
  await sendFast(service, 'fast01');
  meters.push('leak02', 'fast01');
  const later = await summaryWhere(service, (s) => s.meters_reporting >= before.meters_reporting + 6,
    `the 6 new meters (today is ${today.label} in ${TENANT_ZONE})`);
  await wait((n) => Number(document.getElementById('kpi-meters').dataset.value) >= n, later.meters_reporting);
  await wait(() => document.querySelectorAll('#alerts li.alert[data-kind="leak"]').length >= 2);
  assert.ok((await numberOf(page, 'kpi-usage')) > Number(before.usage_today_l), 'usage today went up');

  // Usage today, recomputed from the stored readings: the litres of the intervals in
  // the tenant's local today, over every meter that sent any. The simulator's readings
  // end before now, so they cover `today` whatever the variant (after midnight: part of it).
  const litres = await storedLitres(service, meters, today);
  const expected = total(litres);
  const utcToday = localDay('UTC', now());
  const hint = async () => `; the same over the UTC day ${utcToday.label}: ${total(await storedLitres(service, meters, utcToday))} L; ` +
    `API summary ${JSON.stringify(await api(service, 'demo/summary'))}`;
  assert.ok(expected > 0, `the stored readings have no litres in the tenant's today ${today.label}: the clock variant must leave data there`);
  t.diagnostic(`usage today ${today.label} (${TENANT_ZONE}): ${expected} L stored over ${meters.length} meters`);
  try {
    await wait((n) => Number(document.getElementById('kpi-usage').dataset.value) === n, expected);
  } catch {
    assert.fail(`the page's usage today (${await numberOf(page, 'kpi-usage')} L) is not the litres stored for ` +
      `${today.label} in ${TENANT_ZONE} (${expected} L)${await hint()}`);
  }
  assert.equal(await page.innerText('#kpi-day'), today.label, "the summary is the tenant's local today");
  // The top list: the day's largest consumers with their litres of the day.
  await eventually(async () => {
    const entries = await api(service, `demo/top?day=${today.label}&limit=10`);
    assert.deepEqual(entries.map((e) => [e.meter, e.usage_l]), entries.map((e) => [e.meter, litres[e.meter]]),
      `top consumers of ${today.label} carry each meter's litres of that day`);
    const largest = Object.values(litres).sort((a, b) => b - a).slice(0, entries.length);
    assert.deepEqual(entries.map((e) => e.usage_l), largest, 'the top list holds the largest consumers');
    assert.deepEqual(await api(service, 'demo/top?limit=10'), entries, "top without ?day= is the tenant's local today");
  });

  // A meter's own "today" (meter view, `today_l`) is the tenant's local day of its
  // newest interval, with the same interval rule, so the meters of a tenant add up to
  // its "usage today". A meter with a fast clock whose newest interval already lies in
  // the tenant's tomorrow shows that day's litres (fast01 before local midnight); the
  // silent meter's newest interval may lie in yesterday (after local midnight).
  await t.test("each meter's today is its newest interval's local day", async () => {
    let ahead = 0;
    for (const meter of meters) {
      const view = await api(service, `demo/meters/${meter}`);
      const day = localDay(TENANT_ZONE, view.last_ts - 1);
      const want = day.label === today.label ? litres[meter] : (await storedLitres(service, [meter], day))[meter];
      ahead += day.label > today.label ? 1 : 0;
      if (meter !== 'silent01') {
        assert.ok(day.label >= today.label, `${meter}: its newest reading is from ${day.label}, before today ${today.label}`);
      }
      assert.equal(view.today_l, want, `${meter}: today_l vs litres stored for ${day.label}`);
    }
    assert.ok(ahead <= 1, `only the fast meter may be a day ahead (${ahead} were)`);
  });

  fs.mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: path.join(OUTPUT, screenshotName()), fullPage: true });
  assert.deepEqual(consoleErrors, [], 'no console errors while showing the tenant');

  // A tenant with a token: the page asks for it, then shows the tenant. Its 401s are
  // logged by the browser as failed loads: those, and only those, are expected here.
  await page.fill('#tenant', 'locked');
  await page.fill('#token', '');
  await page.click('#tenant-form button');
  await page.waitForSelector('#banner:not([hidden])', { timeout: UI_TIMEOUT_MS });
  assert.match(await page.innerText('#banner'), /needs an API token/);
  assert.equal(await page.getAttribute('#token', 'aria-invalid'), 'true');
  assert.equal(await page.$$eval('#alerts li', (l) => l.length), 0, "demo's alerts are not shown under another tenant");
  assert.equal(await page.$$eval('#silent tbody tr, #found tbody tr', (l) => l.length), 0, "demo's meters are not listed under another tenant");
  await page.fill('#token', TOKEN);
  await page.click('#tenant-form button');
  await page.waitForSelector('#banner', { state: 'hidden', timeout: UI_TIMEOUT_MS });
  await page.waitForSelector('#empty:not([hidden])', { timeout: UI_TIMEOUT_MS }); // no data yet
  t.diagnostic(`console errors after the tenant switch: ${consoleErrors.length} (the locked tenant's 401s)`);
  const unexpected = consoleErrors.filter((e) => !/Failed to load resource.*401/.test(e) || !e.includes('/tenants/locked/'));
  assert.deepEqual(unexpected, [], 'no console errors but the 401s of the locked tenant before its token');

  assert.deepEqual(pageErrors, [], 'no script errors in the page');
  assert.deepEqual(foreign, [], 'the page loads nothing from another origin');
  assert.equal(localDay(TENANT_ZONE, now()).label, today.label, "the test ran within the tenant's local day it started in");
});

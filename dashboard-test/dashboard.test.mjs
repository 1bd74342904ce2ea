// Browser test of the meterflow dashboard (ingest/src/dashboard/): a real meterflow on
// free loopback ports with a temporary data directory, a simulated fleet and a
// leak-flagged uplink over MQTT, and Debian's Chromium driven by playwright-core.
// It checks that the summary, the district chart, the top list, the leak alert and the
// meter drill-down appear, that they UPDATE when more data arrives, and that a tenant
// with an API token gets the "token needed" state until the token is entered.
//
// Builds nothing: it runs the debug binaries (`cargo build` first; scripts/test does).
//   MF_BIN        meterflow binary   (default $CARGO_TARGET_DIR or ./target, debug/meterflow)
//   MF_SIM_BIN    simulator binary   (default … debug/meterflow-sim)
//   CHROMIUM_BIN  browser            (default /usr/bin/chromium)
// A screenshot of the final state is saved as dashboard-test/output/dashboard.png.

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

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');
const TARGET = path.resolve(REPO, process.env.CARGO_TARGET_DIR || 'target');
const MF_BIN = process.env.MF_BIN || path.join(TARGET, 'debug', 'meterflow');
const SIM_BIN = process.env.MF_SIM_BIN || path.join(TARGET, 'debug', 'meterflow-sim');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUTPUT = path.join(HERE, 'output');
/** The whole test, start to cleanup. */
const TEST_TIMEOUT_MS = 60_000;
/** How long the page gets to show something the API already has: a poll is 3 s. */
const UI_TIMEOUT_MS = 12_000;
const TOKEN = 'dashboard-test-token';

const run = promisify(execFile);
const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-dashboard-'));
let browserContext;

after(async () => {
  if (browserContext) await browserContext.close().catch(() => {});
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

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
  for (const [bin, what] of [[MF_BIN, 'MF_BIN'], [SIM_BIN, 'MF_SIM_BIN'], [CHROMIUM, 'CHROMIUM_BIN']]) {
    assert.ok(fs.existsSync(bin), `${bin} is missing: build it (cargo build --workspace) or set ${what}`);
  }
  const [mqtt, http] = [await freePort(), await freePort()];
  const config = path.join(tmp, 'meterflow.toml');
  // `demo` as built in (anonymous meters, no token) plus a tenant with an API token;
  // district rows, top lists and summaries flushed (and timers swept, which flushes
  // them once traffic stops) every second instead of every minute, so the page can
  // show them and their updates within the test's budget.
  fs.writeFileSync(config, [
    '[[tenants]]', 'id = "demo"', '',
    '[[tenants]]', 'id = "locked"', `api_token = "${TOKEN}"`, '',
    '[pipeline]', 'sweep_interval_s = 1', '',
    '[processors.analytics]', 'flush_interval_ms = 1000', '',
  ].join('\n'));
  const logPath = path.join(tmp, 'meterflow.log');
  const log = fs.openSync(logPath, 'w');
  const child = spawn(MF_BIN, ['run', '--config', config, '--mqtt', `127.0.0.1:${mqtt}`, '--http', `127.0.0.1:${http}`, '--data', path.join(tmp, 'data')], {
    env: { ...process.env, MF_SHARDS: '2' },
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

/** A fleet of `meters` meters from index `first`, one reading a minute for 40 min up to now. */
async function simulate(service, first, meters) {
  const { stdout } = await run(SIM_BIN, [
    '--mqtt', `127.0.0.1:${service.mqtt}`, '--tenant', 'demo',
    '--first-meter', String(first), '--meters', String(meters),
    '--messages-per-meter', '10', '--readings-per-message', '4', '--interval-ms', '60000',
    '--seed', String(first + 1), '--timeout', '20', '--json',
  ], { timeout: 25_000 });
  const report = JSON.parse(stdout);
  assert.equal(report.unacked, 0, `simulator: ${stdout}\n${service.logTail()}`);
  return report;
}

/** A device-flagged leak from `meter`, as a meter's firmware would send it. */
async function sendLeak(service, meter) {
  const payload = JSON.stringify({
    v: 1, seq: 1, readings: [{ ts: Date.now() - 60_000, reg: 81_250, rev: 0, flow: 95 }], flags: ['leak'],
  });
  await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(service.mqtt), '-i', `demo.${meter}`,
    '-t', `meters/demo/${meter}/up`, '-q', '1', '-m', payload], { timeout: 10_000 });
}

async function api(service, path, token) {
  const res = await fetch(service.url + '/api/v1/tenants/' + path, token ? { headers: { Authorization: 'Bearer ' + token } } : {});
  assert.equal(res.status, 200, `GET ${path}: ${await res.clone().text()}`);
  return res.json();
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

const numberOf = (page, id) => page.$eval('#' + id, (el) => Number(el.dataset.value || NaN));

test('the dashboard shows a live tenant and keeps up with new data', { timeout: TEST_TIMEOUT_MS }, async () => {
  const service = await startMeterflow();
  const index = await fetch(service.url + '/');
  assert.equal(index.status, 200, 'GET / must serve the dashboard: is meterflow_ingest::dashboard::routes() merged into the HTTP router?');
  assert.match(index.headers.get('content-security-policy') || '', /default-src 'self'/);
  await simulate(service, 0, 12);
  await sendLeak(service, 'leak01');
  const before = await summaryWhere(service, (s) => s.meters_reporting >= 12 && s.alerts_open >= 1, '12 meters and an alert');

  browserContext = await chromium.launchPersistentContext(path.join(tmp, 'chromium'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 1000 },
  });
  const page = browserContext.pages()[0] || (await browserContext.newPage());
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(service.url + '/');
  const wait = (fn, arg) => page.waitForFunction(fn, arg, { timeout: UI_TIMEOUT_MS });

  // Summary: the page shows what the API says.
  await wait((n) => Number(document.getElementById('kpi-meters').dataset.value) >= n, before.meters_reporting);
  assert.ok((await numberOf(page, 'kpi-usage')) > 0, 'usage today is shown and positive');
  assert.ok((await numberOf(page, 'kpi-alerts')) >= 1, 'open alerts counted');
  assert.ok(await page.isHidden('#empty'), 'no "no data yet" hint once meters report');
  assert.ok(await page.isHidden('#banner'), 'no error banner');

  // District chart: an SVG with data points, minute resolution by default.
  await page.waitForSelector('#district-chart circle.pt', { timeout: UI_TIMEOUT_MS });
  const points = await page.$$eval('#district-chart circle.pt', (c) => c.length);
  assert.ok(points >= 5, `minute chart has ${points} points for 40 min of readings`);
  assert.equal(await page.$eval('#district', (s) => s.value), 'default');

  // The hour view answers too (rows or its empty state), then back to minutes.
  await page.click('label[for="res-hour"]');
  await wait(() => document.getElementById('usage-meta').textContent.startsWith('last 48 h'));
  await page.click('label[for="res-minute"]');
  await page.waitForSelector('#district-chart circle.pt', { timeout: UI_TIMEOUT_MS });

  // The leak alert, with its priority, and the top consumers.
  const leak = await page.waitForSelector('#alerts li.alert[data-kind="leak"][data-meter="leak01"]', { timeout: UI_TIMEOUT_MS });
  assert.equal(await leak.getAttribute('data-priority'), 'high');
  assert.match(await leak.innerText(), /Leak/);
  await page.waitForSelector('#top tbody tr', { timeout: UI_TIMEOUT_MS });
  const topMeters = await page.$$eval('#top tbody tr', (rows) => rows.map((r) => r.dataset.meter));
  const top = await api(service, 'demo/top?limit=10');
  assert.deepEqual(topMeters, top.map((t) => t.meter), 'top list in the API order');

  // Drill-down: click the biggest consumer.
  await page.click('#top tbody tr:first-child button');
  await page.waitForSelector('#meter-chart rect.bar', { state: 'attached', timeout: UI_TIMEOUT_MS });
  const facts = await page.innerText('#meter-facts');
  assert.match(facts, /QUALITY\s+actual/i);
  assert.match(facts, /BILL \d{4}-\d{2}/i);
  assert.equal(await page.$eval('#meter-title .id', (e) => e.textContent), topMeters[0]);

  // Live updates: more meters and another leak show up without a reload.
  await simulate(service, 100, 6);
  await sendLeak(service, 'leak02');
  const later = await summaryWhere(service, (s) => s.meters_reporting >= before.meters_reporting + 6, 'the 6 new meters');
  await wait((n) => Number(document.getElementById('kpi-meters').dataset.value) >= n, later.meters_reporting);
  await wait(() => document.querySelectorAll('#alerts li.alert[data-kind="leak"]').length >= 2);
  assert.ok((await numberOf(page, 'kpi-usage')) > Number(before.usage_today_l), 'usage today went up');

  fs.mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: path.join(OUTPUT, 'dashboard.png'), fullPage: true });

  // A tenant with a token: the page asks for it, then shows the tenant.
  await page.fill('#tenant', 'locked');
  await page.fill('#token', '');
  await page.click('#tenant-form button');
  await page.waitForSelector('#banner:not([hidden])', { timeout: UI_TIMEOUT_MS });
  assert.match(await page.innerText('#banner'), /needs an API token/);
  assert.equal(await page.getAttribute('#token', 'aria-invalid'), 'true');
  assert.equal(await page.$$eval('#alerts li', (l) => l.length), 0, "demo's alerts are not shown under another tenant");
  await page.screenshot({ path: path.join(OUTPUT, 'token-needed.png') });
  await page.fill('#token', TOKEN);
  await page.click('#tenant-form button');
  await page.waitForSelector('#banner', { state: 'hidden', timeout: UI_TIMEOUT_MS });
  await page.waitForSelector('#empty:not([hidden])', { timeout: UI_TIMEOUT_MS }); // no data yet
  await page.screenshot({ path: path.join(OUTPUT, 'empty-tenant.png') });

  assert.deepEqual(pageErrors, [], 'no script errors in the page');
});

// Checks of what the dashboard draws, for dashboard.test.mjs: wall-clock fields in a
// zone, the chart axes (round times, round values with units) and the runs of a line
// chart. Each reads the page's DOM through playwright and asserts.

import assert from 'node:assert/strict';

/** Wall-clock fields of `ms` in `zone` (Intl: independent of the machine's zone). */
export function wallClock(zone, ms) {
  const fields = new Intl.DateTimeFormat('en-US', {
    timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(ms);
  const get = (type) => Number(fields.find((f) => f.type === type).value);
  return { y: get('year'), m: get('month'), d: get('day'), hh: get('hour'), mm: get('minute'), ss: get('second') };
}

const pad = (n) => String(n).padStart(2, '0');
/** Label steps a reader takes for round, in minutes. */
const ROUND_STEPS_MIN = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];

/**
 * The time labels of `chart` sit on round times of `zone` — all on one step of
 * ROUND_STEPS_MIN, none missing between the first and the last — and each reads its
 * instant's HH:MM in that zone. Returns the step in minutes.
 */
export async function assertRoundTimeAxis(page, chart, zone) {
  const labels = await page.$$eval(`#${chart} text.axis.x`, (els) => els.map((e) => ({ t: Number(e.dataset.t), text: e.textContent })));
  assert.ok(labels.length >= 3, `${chart}: ${labels.length} time labels (${JSON.stringify(labels)})`);
  const minutes = labels.map(({ t, text }) => {
    assert.ok(Number.isFinite(t), `${chart}: a time label without its instant (data-t): ${text}`);
    const w = wallClock(zone, t);
    assert.equal(w.ss, 0, `${chart}: label ${text} is not on a whole minute`);
    assert.ok(text.endsWith(`${pad(w.hh)}:${pad(w.mm)}`), `${chart}: label "${text}" is not ${pad(w.hh)}:${pad(w.mm)} in ${zone}`);
    return w.hh * 60 + w.mm;
  });
  const step = [...ROUND_STEPS_MIN].reverse().find((s) => minutes.every((m) => m % s === 0));
  assert.ok(step, `${chart}: labels at odd times in ${zone}: ${labels.map((l) => l.text).join(', ')}`);
  for (let i = 1; i < labels.length; i++) {
    const gap = (labels[i].t - labels[i - 1].t) / 60_000;
    // A DST change moves a wall-clock step of an hour or more by up to an hour.
    const ok = step < 60 ? gap === step : Math.abs(gap - step) <= 60;
    assert.ok(ok, `${chart}: labels ${labels[i - 1].text} and ${labels[i].text} are ${gap} min apart, the step is ${step}`);
  }
  return step;
}

/**
 * The value labels of `chart` are 0, s, 2s, … with s = 1, 2 or 5 × 10^k litres, each
 * written with its unit (L, or m³ for whole cubic metres).
 */
export async function assertRoundValueAxis(page, chart) {
  const labels = await page.$$eval(`#${chart} text.axis.y`, (els) => els.map((e) => ({ v: Number(e.dataset.v), text: e.textContent })));
  assert.ok(labels.length >= 2, `${chart}: ${labels.length} value labels`);
  const values = labels.map((l) => l.v).sort((a, b) => a - b);
  assert.equal(values[0], 0, `${chart}: the value axis starts at 0`);
  const step = values[1];
  const mantissa = step / 10 ** Math.floor(Math.log10(step));
  assert.ok([1, 2, 5].includes(mantissa), `${chart}: value step ${step} is not 1, 2 or 5 × 10^k`);
  values.forEach((v, i) => assert.equal(v, i * step, `${chart}: value labels ${values.join(', ')}`));
  for (const { v, text } of labels) {
    const m = /^([\d,.]+) (L|m³)$/.exec(text);
    assert.ok(m, `${chart}: value label "${text}" has no unit`);
    assert.equal(Number(m[1].replace(/,/g, '')) * (m[2] === 'm³' ? 1000 : 1), v, `${chart}: label "${text}" vs ${v} L`);
  }
}

/** Windows of `rows` (start_ms) in runs of consecutive windows `step` apart. */
export function runsOf(rows, step) {
  const starts = rows.map((r) => r.start_ms).sort((a, b) => a - b);
  return starts.filter((s, i) => i === 0 || s - starts[i - 1] > step).length;
}

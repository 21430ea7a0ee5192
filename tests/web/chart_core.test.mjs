// node --test tests/web/   (pure chart logic, no browser)
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ChartState,
  EmaTracker,
  SeriesStore,
  ema,
  formatDuration,
  formatLoss,
  formatLr,
  lossRange,
  niceTicks,
  valueRange,
} from "../../web/lib/chart_core.js";

const close = (a, b, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${a} != ${b} (tol ${tol})`);

describe("ema", () => {
  test("bias correction: a constant series stays constant from the first value", () => {
    for (const v of ema([2, 2, 2, 2, 2], 0.9)) close(v, 2);
  });

  test("matches the closed form of a bias-corrected EMA", () => {
    const xs = [1, 3, 2, 5];
    const beta = 0.6;
    const out = ema(xs, beta);
    let biased = 0;
    xs.forEach((x, i) => {
      biased = beta * biased + (1 - beta) * x;
      close(out[i], biased / (1 - beta ** (i + 1)));
    });
  });

  test("beta 0 is the identity and non-finite values keep the previous value", () => {
    assert.deepEqual(ema([1, 2, 3], 0), [1, 2, 3]);
    const out = ema([NaN, 4, Infinity, 6], 0.5);
    assert.ok(Number.isNaN(out[0]));
    close(out[1], 4);
    close(out[2], 4);
    assert.ok(out[3] > 4 && out[3] < 6);
  });

  test("rejects a smoothing factor outside [0, 1)", () => {
    assert.throws(() => new EmaTracker(1), RangeError);
    assert.throws(() => new EmaTracker(-0.1), RangeError);
  });
});

describe("SeriesStore", () => {
  test("keeps every point while under capacity", () => {
    const s = new SeriesStore({ capacity: 16, smoothing: 0 });
    for (let i = 1; i <= 10; i++) s.push(i, i / 10, 1e-4);
    const ser = s.series();
    assert.deepEqual(ser.steps, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(ser.loss, ser.smooth);
    assert.equal(s.count, 10);
    assert.equal(s.stride, 1);
  });

  test("stays bounded for 100k steps and still spans the whole run", () => {
    const cap = 512;
    const s = new SeriesStore({ capacity: cap });
    for (let i = 1; i <= 100_000; i++) s.push(i, 1 / Math.sqrt(i), 1e-4);
    const ser = s.series();
    assert.equal(s.count, 100_000);
    assert.ok(s.length <= cap, `stored ${s.length} > capacity ${cap}`);
    assert.ok(s.length >= cap / 4, `stored only ${s.length}`);
    assert.equal(ser.steps[ser.steps.length - 1], 100_000);
    assert.ok(ser.steps[0] <= s.stride, `first bucket ends at ${ser.steps[0]}`);
    for (let i = 1; i < ser.steps.length; i++) assert.ok(ser.steps[i] > ser.steps[i - 1]);
  });

  test("decimated buckets keep the mean, and min/max keep a spike", () => {
    const s = new SeriesStore({ capacity: 4, smoothing: 0 });
    // 8 points, capacity 4: after two halvings each bucket covers 4 steps (stride 4).
    const losses = [1, 1, 1, 9, 2, 2, 2, 2];
    losses.forEach((l, i) => s.push(i + 1, l, 0.5));
    const ser = s.series();
    assert.equal(s.stride, 4);
    assert.deepEqual(ser.steps, [4, 8]);
    assert.deepEqual(ser.loss, [3, 2]);
    assert.deepEqual(ser.lossMax, [9, 2]);
    assert.deepEqual(ser.lossMin, [1, 2]);
  });

  test("ignores repeated and older steps", () => {
    const s = new SeriesStore();
    assert.equal(s.push(1, 0.5, 1), true);
    assert.equal(s.push(1, 0.7, 1), false);
    assert.equal(s.push(0, 0.7, 1), false);
    assert.equal(s.count, 1);
  });

  test("a NaN loss is counted but not averaged in", () => {
    const s = new SeriesStore({ capacity: 4, smoothing: 0 });
    [1, NaN, 3, 5].forEach((l, i) => s.push(i + 1, l, 1));
    const ser = s.series();
    assert.equal(s.count, 4);
    assert.ok(ser.loss.some(Number.isNaN) || ser.loss.every(Number.isFinite));
    assert.ok(ser.loss.filter(Number.isFinite).every((v) => v >= 1 && v <= 5));
  });
});

const ev = (over) => ({ node: "12", display_node: "12", prompt_id: "p1", step: 0, total: 100, points: [], elapsed: 1, eta: 10, status: "training", ...over });

describe("ChartState.applyEvent", () => {
  test("appends points and takes step/total/eta/status from the event", () => {
    const c = new ChartState();
    assert.equal(c.applyEvent(ev({ step: 2, points: [[1, 0.5, 1e-4], [2, 0.4, 1e-4]] })), 2);
    assert.equal(c.applyEvent(ev({ step: 4, points: [[3, 0.3, 1e-4], [4, 0.2, 5e-5]], eta: 123 })), 2);
    assert.equal(c.store.count, 4);
    assert.equal(c.step, 4);
    assert.equal(c.total, 100);
    assert.equal(c.eta, 123);
    assert.equal(c.header(), "step 4/100 · loss 0.2000 · lr 5.0e-5 · ETA 2:03");
  });

  test("a re-delivered event does not duplicate points", () => {
    const c = new ChartState();
    const e = ev({ step: 2, points: [[1, 0.5, 1], [2, 0.4, 1]] });
    c.applyEvent(e);
    assert.equal(c.applyEvent(e), 0);
    assert.equal(c.store.count, 2);
  });

  test("a new prompt that starts over resets; one that continues appends", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 2, points: [[1, 0.5, 1], [2, 0.4, 1]] }));
    c.applyEvent(ev({ prompt_id: "p2", step: 3, points: [[3, 0.3, 1]] }));
    assert.equal(c.store.count, 3, "resumed run (steps continue) keeps the history");
    c.applyEvent(ev({ prompt_id: "p3", step: 1, points: [[1, 0.9, 1]] }));
    assert.equal(c.store.count, 1, "fresh run (step 1 again) starts a new chart");
    assert.equal(c.promptId, "p3");
  });

  test("tolerates missing fields and malformed points", () => {
    const c = new ChartState();
    assert.equal(c.applyEvent(null), 0);
    assert.equal(c.applyEvent({ points: [[1, 0.5], "x", [2]] }), 1);
    assert.equal(c.step, 1);
    assert.equal(c.header(), "step 1 · loss 0.5000");
  });

  test("final status shows the elapsed time instead of the ETA", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 100, points: [[100, 0.1, 1e-4]], status: "done", elapsed: 3723, eta: null }));
    assert.equal(c.header(), "step 100/100 · loss 0.1000 · lr 1.0e-4 · done in 1:02:03");
  });
});

describe("ChartState.rebuild", () => {
  test("rebuilds from the final UI output, replacing streamed points", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 1, points: [[1, 7, 1]] }));
    const ok = c.rebuild({ steps: [1, 2, 3], loss: [0.3, 0.2, 0.1], lr: [1e-4, 1e-4, 1e-4], total: 3, elapsed: 5, status: "done" });
    assert.equal(ok, true);
    assert.equal(c.store.count, 3);
    assert.deepEqual(c.store.series().loss, [0.3, 0.2, 0.1]);
    assert.equal(c.status, "done");
    assert.equal(c.step, 3);
    assert.equal(c.total, 3);
  });

  test("rejects records without steps/loss and keeps the current state", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 1, points: [[1, 7, 1]] }));
    assert.equal(c.rebuild({ loss: [1] }), false);
    assert.equal(c.rebuild(undefined), false);
    assert.equal(c.store.count, 1);
  });

  test("rebuilding 100k steps stays bounded", () => {
    const n = 100_000;
    const steps = Array.from({ length: n }, (_, i) => i + 1);
    const c = new ChartState({ capacity: 1024 });
    c.rebuild({ steps, loss: steps.map((s) => 1 / s), lr: [], total: n, elapsed: 1, status: "cancelled" });
    assert.equal(c.store.count, n);
    assert.ok(c.store.length <= 1024);
    assert.equal(c.header(), "step 100000/100000 · loss 1.00e-5 · cancelled in 0:01");
  });
});

describe("formatting", () => {
  test("durations", () => {
    assert.equal(formatDuration(3723), "1:02:03");
    assert.equal(formatDuration(123), "2:03");
    assert.equal(formatDuration(0), "0:00");
    assert.equal(formatDuration(59.6), "1:00");
    assert.equal(formatDuration(null), "--:--");
    assert.equal(formatDuration(-1), "--:--");
    assert.equal(formatDuration(NaN), "--:--");
  });

  test("loss and learning rate", () => {
    assert.equal(formatLoss(0.12344), "0.1234");
    assert.equal(formatLoss(0.00001), "1.00e-5");
    assert.equal(formatLoss(123.456), "123.5");
    assert.equal(formatLr(1e-4), "1.0e-4");
    assert.equal(formatLr(0.00025), "2.5e-4");
    assert.equal(formatLr(1), "1.0e0");
    assert.equal(formatLr(0), "0");
  });
});

describe("axes", () => {
  test("nice ticks cover the range with 1/2/5 steps", () => {
    const { ticks, step } = niceTicks(0.03, 0.97, 5);
    assert.equal(step, 0.2);
    assert.deepEqual(ticks, [0.2, 0.4, 0.6, 0.8]);
    assert.deepEqual(niceTicks(0, 1000, 5).ticks, [0, 200, 400, 600, 800, 1000]);
    assert.deepEqual(niceTicks(0, 1000, 4).ticks, [0, 500, 1000]);
    assert.ok(niceTicks(5, 5).ticks.length >= 1, "flat range still gets ticks");
    assert.deepEqual(niceTicks(NaN, 1).ticks, []);
  });

  test("lossRange clips a single spike but not a genuine trend", () => {
    const flat = Array.from({ length: 100 }, (_, i) => 0.1 + (i % 5) * 0.001);
    const spiky = flat.slice();
    spiky[50] = 50;
    const r = lossRange(spiky);
    assert.equal(r.clipped, true);
    assert.ok(r.max < 1, `spike not clipped: max ${r.max}`);
    const trend = Array.from({ length: 100 }, (_, i) => 1 / (i + 1));
    const t = lossRange(trend);
    assert.equal(t.clipped, false);
    assert.ok(t.max >= 1);
    assert.equal(lossRange([NaN]), null);
    assert.ok(lossRange([0.5]).max > 0.5);
  });

  test("valueRange pads a flat series and skips non-finite values", () => {
    assert.deepEqual(valueRange([NaN, 2, 4]), { min: 2, max: 4 });
    const f = valueRange([1e-4, 1e-4]);
    assert.ok(f.min < 1e-4 && f.max > 1e-4);
    assert.equal(f.flat, 1e-4);
    assert.equal(valueRange([NaN]), null);
  });
});

describe("ChartState phases and notes", () => {
  test("a phase between steps shows in the header before the ETA, and goes with the next step", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 4, points: [[4, 0.25, 1e-4]], eta: 119 }));
    c.applyEvent(ev({ step: 4, points: [], phase: "sampling preview 2/4, step 7/20", eta: 100 }));
    assert.equal(c.header(), "step 4/100 · loss 0.2500 · lr 1.0e-4 · sampling preview 2/4, step 7/20 · ETA 1:40");
    c.applyEvent(ev({ step: 5, points: [[5, 0.2, 1e-4]], eta: 90 }));
    assert.equal(c.header(), "step 5/100 · loss 0.2000 · lr 1.0e-4 · ETA 1:30");
  });

  test("what Cancel saved stays readable after the run", () => {
    const c = new ChartState();
    c.applyEvent(ev({ step: 10, points: [[10, 0.1, 1e-4]] }));
    c.applyEvent(ev({ step: 10, status: "cancelled", elapsed: 96, phase: "saved step 10: a.safetensors",
                      notes: ["checkpoint: my_lora_checkpoints/x.safetensors (13.0 MB)", "saved step 10: a.safetensors"] }));
    assert.equal(c.header(), "step 10/100 · loss 0.1000 · lr 1.0e-4 · cancelled in 1:36");
    assert.equal(c.note(), "saved step 10: a.safetensors");
    const r = new ChartState();
    r.rebuild({ steps: [1, 2], loss: [0.5, 0.4], lr: [1e-4, 1e-4], total: 2, status: "done", notes: ["n1"] });
    assert.equal(r.note(), "n1");
  });

  test("a new run's first event replaces the previous run's 'done in'", () => {
    const c = new ChartState();
    c.rebuild({ steps: [1, 2], loss: [0.5, 0.4], lr: [1e-4, 1e-4], total: 2, elapsed: 654, status: "done" });
    assert.ok(c.header().includes("done in 10:54"));
    c.applyEvent(ev({ prompt_id: "p2", step: 0, total: 4, points: [], phase: "loading the model for training" }));
    assert.equal(c.header(), "step 0/4 · loading the model for training · ETA 0:10");
    c.applyEvent(ev({ prompt_id: "p2", step: 2, total: 4, points: [[1, 0.5, 1e-4], [2, 0.4, 1e-4]], eta: 5 }));
    c.applyEvent(ev({ prompt_id: "p2", step: 3, total: 4, points: [[3, 0.3, 1e-4]], eta: 5 }));
    assert.equal(c.store.count, 3); // a continuation re-sends the earlier points
    assert.ok(c.header().startsWith("step 3/4"));
  });
});

describe("ChartState validation points", () => {
  test("rebuild takes them from the final output; a new run clears them; bounded", () => {
    const c = new ChartState({ capacity: 4 });
    c.rebuild({ steps: [1, 2, 3], loss: [1, 0.9, 0.8], lr: [1, 1, 1], total: 3, status: "done",
                validation: [[1, 1.1], [3, 0.95]] });
    assert.deepEqual(c.validation, { steps: [1, 3], loss: [1.1, 0.95] });
    c.rebuild({ steps: [1], loss: [1], lr: [1], total: 1, status: "done" });
    assert.deepEqual(c.validation, { steps: [], loss: [] });
    assert.ok(!c.header().includes("val"));
    for (let i = 1; i <= 9; i++) c.pushValidation(i, 1 / i);
    assert.ok(c.validation.steps.length <= 4 && c.validation.steps.at(-1) === 9);
  });
});

// node --test tests/web/   (canvas drawing against a recording 2D context, no browser)
import assert from "node:assert/strict";
import { test } from "node:test";

import { ChartState } from "../../web/lib/chart_core.js";
import { drawChart } from "../../web/lib/draw.js";

/** Records path calls; enough of CanvasRenderingContext2D for drawChart. */
function recordingContext() {
  const calls = [];
  const strokes = []; // [{color, points: [[x, y], ...]}]
  let path = [];
  const ctx = {
    calls,
    strokes,
    strokeStyle: "",
    fillStyle: "",
    lineWidth: 1,
    font: "",
    textAlign: "",
    textBaseline: "",
    texts: [],
  };
  for (const name of ["clearRect", "fillRect", "save", "restore", "clip", "rect"]) ctx[name] = (...a) => calls.push([name, ...a]);
  ctx.beginPath = () => (path = []);
  ctx.moveTo = (x, y) => path.push([x, y, "M"]);
  ctx.lineTo = (x, y) => path.push([x, y, "L"]);
  ctx.stroke = () => strokes.push({ color: ctx.strokeStyle, width: ctx.lineWidth, points: path.slice() });
  ctx.fillText = (t, x, y) => ctx.texts.push([String(t), x, y]);
  return ctx;
}

test("empty state draws a waiting message and no series", () => {
  const ctx = recordingContext();
  const r = drawChart(ctx, 300, 150, new ChartState());
  assert.equal(r.drawn, 0);
  assert.ok(ctx.texts.some(([t]) => t.includes("waiting")));
});

test("draws raw, smoothed and lr series inside the plot area", () => {
  const c = new ChartState({ smoothing: 0.9 });
  const points = Array.from({ length: 50 }, (_, i) => [i + 1, 1 / (i + 1) + (i % 3) * 0.01, 1e-4 * (1 - i / 50)]);
  c.applyEvent({ prompt_id: "p", step: 50, total: 100, points, status: "training", eta: 10 });
  const colors = { raw: "RAW", smooth: "SMOOTH", lr: "LR" };
  const ctx = recordingContext();
  const W = 400;
  const H = 200;
  const r = drawChart(ctx, W, H, c, colors);
  assert.equal(r.drawn, 50);
  for (const color of ["RAW", "SMOOTH", "LR"]) {
    const s = ctx.strokes.find((st) => st.color === color);
    assert.ok(s, `no ${color} stroke`);
    assert.equal(s.points.length, 50);
    for (const [x, y] of s.points) assert.ok(x >= 0 && x <= W && y >= 0 && y <= H, `${color} point off canvas: ${x},${y}`);
    // x increases with the step; the x axis spans 0..total so step 50 of 100 sits mid-plot.
    for (let i = 1; i < s.points.length; i++) assert.ok(s.points[i][0] > s.points[i - 1][0]);
    assert.ok(s.points[49][0] < W * 0.75);
  }
  // Loss decreases, so (canvas y grows downward) the smoothed curve ends lower than it starts.
  const sm = ctx.strokes.find((st) => st.color === "SMOOTH").points;
  assert.ok(sm[49][1] > sm[0][1]);
  assert.ok(ctx.texts.length > 4, "axis labels drawn");
});

test("non-finite losses break the line instead of drawing NaN coordinates", () => {
  const c = new ChartState({ smoothing: 0 });
  c.applyEvent({ prompt_id: "p", step: 4, points: [[1, 1, 1], [2, NaN, 1], [3, 0.5, 1], [4, 0.4, 1]] });
  const ctx = recordingContext();
  drawChart(ctx, 300, 150, c, { raw: "RAW" });
  const raw = ctx.strokes.find((st) => st.color === "RAW").points;
  assert.equal(raw.length, 3);
  assert.deepEqual(raw.map((p) => p[2]), ["M", "M", "L"]);
  for (const [x, y] of raw) assert.ok(Number.isFinite(x) && Number.isFinite(y));
});

test("a constant learning rate gets one axis label", () => {
  const c = new ChartState({ smoothing: 0 });
  c.applyEvent({ prompt_id: "p", step: 20, total: 20, points: Array.from({ length: 20 }, (_, i) => [i + 1, 1 / (i + 1), 1e-4]) });
  const ctx = recordingContext();
  const colors = { lr: "LR" };
  const texts = [];
  const fill = ctx.fillText;
  ctx.fillText = (t, x, y) => { texts.push([String(t), ctx.fillStyle]); fill(t, x, y); };
  drawChart(ctx, 400, 200, c, colors);
  assert.deepEqual(texts.filter(([, color]) => color === "LR").map(([t]) => t), ["1.0e-4"]);
  // a changing one gets ticks
  const d = new ChartState({ smoothing: 0 });
  d.applyEvent({ prompt_id: "p", step: 20, total: 20, points: Array.from({ length: 20 }, (_, i) => [i + 1, 1, 1e-4 * (1 - i / 20)]) });
  const ctx2 = recordingContext();
  const texts2 = [];
  const fill2 = ctx2.fillText;
  ctx2.fillText = (t, x, y) => { texts2.push([String(t), ctx2.fillStyle]); fill2(t, x, y); };
  drawChart(ctx2, 400, 200, d, colors);
  assert.ok(texts2.filter(([, color]) => color === "LR").length >= 2);
});

test("validation points are a second curve with markers and a legend; none without validation", () => {
  const points = Array.from({ length: 20 }, (_, i) => [i + 1, 1 / (i + 1), 1e-4]);
  const colors = { raw: "RAW", smooth: "SMOOTH", lr: "LR", validation: "VAL" };
  const plain = new ChartState();
  plain.applyEvent({ prompt_id: "p", step: 20, total: 20, points, status: "done" });
  const ctx0 = recordingContext();
  drawChart(ctx0, 400, 200, plain, colors);
  assert.ok(!ctx0.strokes.some((st) => st.color === "VAL"));
  assert.ok(!ctx0.texts.some(([t]) => t === "validation"));

  const c = new ChartState();
  c.applyEvent({ prompt_id: "p", step: 10, total: 20, points: points.slice(0, 10), status: "training",
                 validation: [[5, 0.4], [10, 0.3]] });
  c.applyEvent({ prompt_id: "p", step: 20, total: 20, points: points.slice(10), status: "done",
                 validation: [[10, 0.3], [20, 0.25]] }); // a re-delivered point is not doubled
  assert.deepEqual(c.validation, { steps: [5, 10, 20], loss: [0.4, 0.3, 0.25] });
  const ctx = recordingContext();
  drawChart(ctx, 400, 200, c, colors);
  const val = ctx.strokes.find((st) => st.color === "VAL" && st.points.length === 3);
  assert.ok(val, "no validation curve");
  const train = ctx.strokes.find((st) => st.color === "SMOOTH" && st.points.length === 20).points;
  // same x scale as the training curve: validation at step 10 sits where the training point of step 10 does
  assert.equal(val.points[1][0], train[9][0]);
  // a falling validation loss: canvas y grows downward, so the curve ends lower than it starts
  assert.ok(val.points[2][1] > val.points[0][1]);
  assert.equal(ctx.calls.filter(([n, , , w]) => n === "fillRect" && w === 4).length, 3); // one marker per point
  assert.ok(ctx.texts.some(([t]) => t === "validation") && ctx.texts.some(([t]) => t === "train"));
  assert.ok(c.header().includes("val 0.25"));
});

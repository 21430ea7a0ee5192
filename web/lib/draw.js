// Canvas 2D rendering of a ChartState (plain canvas API, no libraries, no DOM lookups): raw loss
// faint, smoothed loss solid, learning rate on a secondary (right) axis, and the validation loss (when the run
// has a Validation node) as a second curve with markers and a legend.
import { formatLr, formatTick, lossRange, niceTicks, valueRange } from "./chart_core.js";

/** Default colours; the extension overrides them from the frontend theme when it can. */
export const DEFAULT_COLORS = {
  background: "#222",
  grid: "rgba(255,255,255,0.08)",
  text: "#aaa",
  raw: "rgba(90,160,255,0.30)",
  smooth: "#5aa0ff",
  lr: "#e0a040",
  validation: "#50c878",
};

const PAD = { left: 44, right: 44, top: 6, bottom: 18 };

/**
 * Draw the chart into a 2D context sized width x height (CSS pixels; scale the context for
 * devicePixelRatio before calling).
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} width @param {number} height
 * @param {import("./chart_core.js").ChartState} state
 * @param {Partial<typeof DEFAULT_COLORS>} [colors]
 * @returns {{drawn: number}} how many points were plotted
 */
export function drawChart(ctx, width, height, state, colors = {}) {
  const c = { ...DEFAULT_COLORS, ...colors };
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = c.background;
  ctx.fillRect(0, 0, width, height);
  const s = state.store.series();
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  ctx.font = "10px sans-serif";
  ctx.fillStyle = c.text;
  if (s.steps.length === 0 || plotW < 10 || plotH < 10) {
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(state.status === "idle" ? "loss chart: waiting for training" : "no loss values yet", width / 2, height / 2);
    return { drawn: 0 };
  }
  const xMin = Math.min(s.steps[0], state.total > 0 ? 0 : s.steps[0]);
  const xMax = Math.max(s.steps[s.steps.length - 1], state.total || 0, xMin + 1);
  const v = state.validation ?? { steps: [], loss: [] };
  const hasVal = v.steps.length > 0;
  const yr = lossRange(hasVal ? s.loss.concat(s.smooth, v.loss) : s.loss.concat(s.smooth)) ?? { min: 0, max: 1, clipped: false };
  const lrr = valueRange(s.lr);
  const x = (v) => PAD.left + ((v - xMin) / (xMax - xMin)) * plotW;
  const y = (v) => PAD.top + (1 - (Math.min(v, yr.max) - yr.min) / (yr.max - yr.min)) * plotH;
  const yLr = lrr ? (v) => PAD.top + (1 - (v - lrr.min) / (lrr.max - lrr.min)) * plotH : null;

  // Grid and axes labels.
  ctx.strokeStyle = c.grid;
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  const yt = niceTicks(yr.min, yr.max, Math.max(2, Math.floor(plotH / 30)));
  ctx.textAlign = "right";
  for (const t of yt.ticks) {
    if (t < yr.min || t > yr.max) continue;
    line(ctx, PAD.left, y(t), PAD.left + plotW, y(t));
    ctx.fillText(formatTick(t, yt.step), PAD.left - 4, y(t));
  }
  if (lrr) {
    ctx.textAlign = "left";
    ctx.fillStyle = c.lr;
    if (lrr.flat !== undefined) {
      // a constant learning rate: one label at its value (ticks around it would read "1e-4, 1e-4, 9e-5")
      ctx.fillText(formatLr(lrr.flat), PAD.left + plotW + 4, yLr(lrr.flat));
    } else {
      const lt = niceTicks(lrr.min, lrr.max, 3);
      for (const t of lt.ticks) if (t >= lrr.min && t <= lrr.max) ctx.fillText(formatTick(t, lt.step), PAD.left + plotW + 4, yLr(t));
    }
  }
  ctx.fillStyle = c.text;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const xt = niceTicks(xMin, xMax, Math.max(2, Math.floor(plotW / 70)));
  for (const t of xt.ticks) if (t >= xMin && t <= xMax) ctx.fillText(formatTick(t, xt.step), x(t), PAD.top + plotH + 3);

  // Series. Spikes above a clipped axis are drawn at the top edge.
  ctx.save();
  ctx.beginPath();
  ctx.rect(PAD.left, PAD.top, plotW, plotH);
  ctx.clip();
  polyline(ctx, s.steps, s.loss, x, y, c.raw, 1);
  if (yLr) polyline(ctx, s.steps, s.lr, x, yLr, c.lr, 1);
  polyline(ctx, s.steps, s.smooth, x, y, c.smooth, 2);
  if (hasVal) {
    polyline(ctx, v.steps, v.loss, x, y, c.validation, 2);
    ctx.fillStyle = c.validation;
    for (let i = 0; i < v.steps.length; i++) {
      if (Number.isFinite(v.loss[i])) ctx.fillRect(x(v.steps[i]) - 2, y(v.loss[i]) - 2, 4, 4);
    }
  }
  ctx.restore();
  if (hasVal) legend(ctx, PAD.left + 4, PAD.top + 1, [["train", c.smooth], ["validation", c.validation]]);
  if (yr.clipped) {
    ctx.fillStyle = c.text;
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText("spikes clipped", PAD.left + plotW - 2, PAD.top + 1);
  }
  return { drawn: s.steps.length };
}

/** A one-line legend: a short stroke in each colour and its label, left to right from (x0, top). */
function legend(ctx, x0, top, entries) {
  ctx.font = "10px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  let x = x0;
  const y = top + 6;
  for (const [label, color] of entries) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    line(ctx, x, y, x + 12, y);
    ctx.fillStyle = color;
    ctx.fillText(label, x + 15, y);
    x += 15 + (ctx.measureText ? ctx.measureText(label).width : label.length * 6) + 10;
  }
}

function line(ctx, x0, y0, x1, y1) {
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
}

function polyline(ctx, xs, ys, fx, fy, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (!Number.isFinite(ys[i])) {
      pen = false;
      continue;
    }
    const px = fx(xs[i]);
    const py = fy(ys[i]);
    if (pen) ctx.lineTo(px, py);
    else ctx.moveTo(px, py);
    pen = true;
  }
  ctx.stroke();
}

// Pure chart logic for the LoRA Loop loss chart: no DOM, no ComfyUI imports, so `node --test`
// can run it (tests/web/chart_core.test.mjs).
//
// Data model. The server sends "lora_loop.progress" events whose `points` are [step, loss, lr]
// triples. A run can have 100k+ steps, so the chart keeps a bounded SeriesStore: raw points are
// folded into buckets of `stride` steps (mean / min / max loss, last lr, EMA at the bucket's last
// step); when the store is full, neighbouring buckets are merged pairwise and the stride doubles.
// Memory stays O(capacity) and the series stays evenly spaced over the whole run.

/** Default number of buckets kept per series (a few thousand is plenty for a node-sized canvas). */
export const DEFAULT_CAPACITY = 2048;
/** Default EMA factor (as in TensorBoard's smoothing slider). */
export const DEFAULT_SMOOTHING = 0.9;

/**
 * Bias-corrected exponential moving average over a whole array (Adam-style correction, so the
 * first values are not pulled toward 0). Non-finite values are skipped and yield the previous
 * smoothed value (NaN before the first finite one).
 * @param {number[]} values
 * @param {number} beta smoothing factor in [0, 1); 0 returns the input
 * @returns {number[]}
 */
export function ema(values, beta = DEFAULT_SMOOTHING) {
  const tracker = new EmaTracker(beta);
  return values.map((v) => tracker.push(v));
}

/** Online bias-corrected EMA. */
export class EmaTracker {
  /** @param {number} beta */
  constructor(beta = DEFAULT_SMOOTHING) {
    if (!(beta >= 0 && beta < 1)) throw new RangeError(`smoothing must be in [0, 1), got ${beta}`);
    this.beta = beta;
    this.biased = 0;
    this.n = 0;
  }

  /** @param {number} x @returns {number} the corrected average after adding x */
  push(x) {
    if (Number.isFinite(x)) {
      this.biased = this.beta * this.biased + (1 - this.beta) * x;
      this.n += 1;
    }
    return this.value;
  }

  get value() {
    if (this.n === 0) return NaN;
    return this.biased / (1 - Math.pow(this.beta, this.n));
  }
}

/** Append one bucket's summary (last step, mean/min/max of finite losses, lr, EMA) to the given columns. */
function appendBucket(b, steps, mean, min, max, lr, smooth) {
  steps.push(b.step);
  mean.push(b.finite ? b.sum / b.finite : NaN);
  min.push(b.finite ? b.min : NaN);
  max.push(b.finite ? b.max : NaN);
  lr.push(b.lr);
  smooth.push(b.smooth);
}

/**
 * Bounded, decimating store of (step, loss, lr) points with an online EMA of the loss.
 * Read it through `series()`; `count` is the number of raw points received.
 */
export class SeriesStore {
  /** @param {{capacity?: number, smoothing?: number}} [opts] */
  constructor({ capacity = DEFAULT_CAPACITY, smoothing = DEFAULT_SMOOTHING } = {}) {
    if (!(capacity >= 4) || capacity % 2 !== 0) throw new RangeError(`capacity must be an even number >= 4, got ${capacity}`);
    this.capacity = capacity;
    this.smoothing = smoothing;
    this.clear();
  }

  clear() {
    this.stride = 1;
    this.count = 0;
    this.lastStep = -Infinity;
    this.last = null; // last raw point {step, loss, lr}
    this._ema = new EmaTracker(this.smoothing);
    // Closed buckets, parallel arrays.
    this.steps = [];
    this.mean = [];
    this.min = [];
    this.max = [];
    this.lr = [];
    this.smooth = [];
    this._open = null; // bucket being filled: {n, sum, min, max, step, lr, smooth}
  }

  /**
   * Append one raw point. Points must arrive with increasing steps; older or repeated steps are
   * ignored (returns false) so a re-delivered event cannot duplicate data.
   * @param {number} step @param {number} loss @param {number|null} lr
   */
  push(step, loss, lr) {
    step = Number(step);
    if (!Number.isFinite(step) || step <= this.lastStep) return false;
    loss = loss == null ? NaN : Number(loss);
    lr = lr == null ? NaN : Number(lr);
    this.lastStep = step;
    this.count += 1;
    this.last = { step, loss, lr };
    const smooth = this._ema.push(loss);
    let b = this._open;
    if (b === null) {
      b = this._open = { n: 0, finite: 0, sum: 0, min: Infinity, max: -Infinity, step, lr, smooth };
    }
    b.n += 1;
    if (Number.isFinite(loss)) {
      b.finite += 1;
      b.sum += loss;
      if (loss < b.min) b.min = loss;
      if (loss > b.max) b.max = loss;
    }
    b.step = step;
    b.lr = lr;
    b.smooth = smooth;
    if (b.n >= this.stride) this._close();
    return true;
  }

  _close() {
    const b = this._open;
    this._open = null;
    appendBucket(b, this.steps, this.mean, this.min, this.max, this.lr, this.smooth);
    if (this.steps.length >= this.capacity) this._halve();
  }

  /** Merge neighbouring buckets pairwise (keeps the later step, lr and EMA). */
  _halve() {
    const half = this.steps.length >> 1;
    const pick = (arr, f) => {
      const out = new Array(half);
      for (let i = 0; i < half; i++) out[i] = f(arr[2 * i], arr[2 * i + 1]);
      return out;
    };
    const later = (_a, b) => b;
    const meanOf = (a, b) => (Number.isFinite(a) && Number.isFinite(b) ? (a + b) / 2 : Number.isFinite(a) ? a : b);
    const minOf = (a, b) => (Number.isFinite(a) && Number.isFinite(b) ? Math.min(a, b) : Number.isFinite(a) ? a : b);
    const maxOf = (a, b) => (Number.isFinite(a) && Number.isFinite(b) ? Math.max(a, b) : Number.isFinite(a) ? a : b);
    this.steps = pick(this.steps, later);
    this.mean = pick(this.mean, meanOf);
    this.min = pick(this.min, minOf);
    this.max = pick(this.max, maxOf);
    this.lr = pick(this.lr, later);
    this.smooth = pick(this.smooth, later);
    this.stride *= 2;
  }

  /**
   * Snapshot for drawing: closed buckets plus the partially filled one.
   * @returns {{steps: number[], loss: number[], lossMin: number[], lossMax: number[], lr: number[], smooth: number[]}}
   */
  series() {
    const s = {
      steps: this.steps.slice(),
      loss: this.mean.slice(),
      lossMin: this.min.slice(),
      lossMax: this.max.slice(),
      lr: this.lr.slice(),
      smooth: this.smooth.slice(),
    };
    if (this._open !== null) appendBucket(this._open, s.steps, s.loss, s.lossMin, s.lossMax, s.lr, s.smooth);
    return s;
  }

  /** Number of stored (decimated) points, the open bucket included. */
  get length() {
    return this.steps.length + (this._open === null ? 0 : 1);
  }
}

/**
 * Everything the chart shows for one node: the series plus the run's header fields.
 */
export class ChartState {
  /** @param {{capacity?: number, smoothing?: number}} [opts] */
  constructor(opts = {}) {
    this.opts = opts;
    this.reset();
  }

  reset() {
    this.store = new SeriesStore(this.opts);
    this.promptId = null;
    this.step = 0;
    this.total = 0;
    this.elapsed = null;
    this.eta = null;
    this.status = "idle";
    this.phase = ""; // what runs between steps ("sampling preview 1/2, step 3/20") or what the run kept
    this.notes = []; // what the user should see afterwards (checkpoints written, what Cancel saved)
    this.validation = { steps: [], loss: [] }; // validation loss points (Validation node), a second curve
  }

  /**
   * Append one validation point [step, loss]; older or repeated steps are ignored. Bounded like the
   * loss series: past the capacity, every other point is dropped (the later of each pair is kept).
   * @returns {boolean} whether it was added
   */
  pushValidation(step, loss) {
    step = Number(step);
    const v = this.validation;
    if (!Number.isFinite(step) || (v.steps.length && step <= v.steps[v.steps.length - 1])) return false;
    v.steps.push(step);
    v.loss.push(loss == null ? NaN : Number(loss));
    if (v.steps.length > this.store.capacity) {
      v.steps = v.steps.filter((_, i) => i % 2 === 1);
      v.loss = v.loss.filter((_, i) => i % 2 === 1);
    }
    return true;
  }

  /** The latest validation loss, or null without validation. */
  lastValidation() {
    const v = this.validation;
    return v.loss.length ? v.loss[v.loss.length - 1] : null;
  }

  /**
   * Merge one "lora_loop.progress" event detail. A new prompt whose first step does not continue
   * the stored series (a fresh run rather than a resumed one) starts a new chart; within one
   * prompt, points at or before the last stored step are dropped as duplicates.
   * @param {object} detail see the protocol in web/loss_chart.js
   * @returns {number} how many points were added
   */
  applyEvent(detail) {
    if (!detail || typeof detail !== "object") return 0;
    const points = Array.isArray(detail.points) ? detail.points.filter((p) => Array.isArray(p) && p.length >= 2) : [];
    const promptId = detail.prompt_id ?? null;
    if (promptId !== this.promptId) {
      const first = points.length ? Number(points[0][0]) : Number(detail.step);
      if (this.store.count > 0 && !(first > this.store.lastStep)) this.reset();
      this.promptId = promptId;
    }
    let added = 0;
    for (const p of points) if (this.store.push(p[0], p[1], p.length > 2 ? p[2] : null)) added += 1;
    if (Array.isArray(detail.validation)) {
      for (const p of detail.validation) if (Array.isArray(p) && p.length >= 2) this.pushValidation(p[0], p[1]);
    }
    if (Number.isFinite(Number(detail.step))) this.step = Number(detail.step);
    else if (this.store.last) this.step = this.store.last.step;
    if (Number.isFinite(Number(detail.total))) this.total = Number(detail.total);
    this.elapsed = finiteOrNull(detail.elapsed);
    this.eta = finiteOrNull(detail.eta);
    if (typeof detail.status === "string") this.status = detail.status;
    this.phase = typeof detail.phase === "string" ? detail.phase : "";
    if (Array.isArray(detail.notes)) this.notes = detail.notes.map(String);
    return added;
  }

  /**
   * Rebuild from the node's final UI output: output.lora_loop_chart[0] =
   * {steps, loss, lr, total, elapsed, status}. Replaces whatever was streamed.
   * @param {object} final
   * @returns {boolean} false if `final` is not a usable chart record
   */
  rebuild(final) {
    if (!final || !Array.isArray(final.steps) || !Array.isArray(final.loss)) return false;
    const promptId = this.promptId;
    this.reset();
    this.promptId = promptId;
    const lr = Array.isArray(final.lr) ? final.lr : [];
    const n = Math.min(final.steps.length, final.loss.length);
    for (let i = 0; i < n; i++) this.store.push(final.steps[i], final.loss[i], i < lr.length ? lr[i] : null);
    if (Array.isArray(final.validation)) {
      for (const p of final.validation) if (Array.isArray(p) && p.length >= 2) this.pushValidation(p[0], p[1]);
    }
    this.step = this.store.last ? this.store.last.step : 0;
    this.total = Number.isFinite(Number(final.total)) ? Number(final.total) : this.step;
    this.elapsed = finiteOrNull(final.elapsed);
    this.eta = null;
    this.status = typeof final.status === "string" ? final.status : "done";
    this.phase = "";
    this.notes = Array.isArray(final.notes) ? final.notes.map(String) : [];
    return true;
  }

  /**
   * "step 123/500 · loss 0.1234 · lr 1.0e-4 · ETA 2:03" (parts without data are left out); a phase
   * between steps shows before the ETA ("· sampling preview 1/2, step 3/20 · ETA 1:59").
   */
  header() {
    const parts = [];
    parts.push(this.total > 0 ? `step ${this.step}/${this.total}` : `step ${this.step}`);
    const last = this.store.last;
    if (last && Number.isFinite(last.loss)) parts.push(`loss ${formatLoss(last.loss)}`);
    const val = this.lastValidation();
    if (val !== null && Number.isFinite(val)) parts.push(`val ${formatLoss(val)}`);
    if (last && Number.isFinite(last.lr)) parts.push(`lr ${formatLr(last.lr)}`);
    if (this.status === "training") {
      if (this.phase) parts.push(this.phase);
      if (this.eta !== null) parts.push(`ETA ${formatDuration(this.eta)}`);
    } else if (this.status !== "idle") {
      parts.push(this.elapsed !== null ? `${this.status} in ${formatDuration(this.elapsed)}` : this.status);
    }
    return parts.join(" · ");
  }

  /** The latest note ("saved on Cancel: ..."), or "" when there is none. */
  note() {
    return this.notes.length ? this.notes[this.notes.length - 1] : "";
  }
}

function finiteOrNull(x) {
  if (x === null || x === undefined || x === "") return null;
  const n = Number(x);
  return Number.isFinite(n) ? n : null;
}

/**
 * Seconds as "m:ss" or "h:mm:ss" ("1:02:03"); "--:--" for missing or negative values.
 * @param {number|null|undefined} seconds
 */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds)) || Number(seconds) < 0) return "--:--";
  const total = Math.round(Number(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Loss with 4 significant decimals for typical values ("0.1234"), exponent for tiny/huge ones. */
export function formatLoss(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  if (a >= 100) return x.toFixed(1);
  return x.toFixed(4);
}

/** Learning rate as "1.0e-4" (one decimal mantissa, no "+" or zero padding). */
export function formatLr(x) {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return "0";
  return x.toExponential(1).replace("e+", "e");
}

/** Short axis label for a tick value. */
export function formatTick(x, step) {
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(0).replace("e+", "e");
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || a) + 1e-9)));
  return x.toFixed(decimals);
}

/**
 * "Nice" tick values (1, 2, 5 x 10^k) covering [min, max].
 * @param {number} min @param {number} max @param {number} [target] about how many ticks
 * @returns {{ticks: number[], step: number}}
 */
export function niceTicks(min, max, target = 5) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return { ticks: [], step: 0 };
  if (max < min) [min, max] = [max, min];
  if (max === min) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / Math.max(1, target);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  const ticks = [];
  const start = Math.ceil(min / step - 1e-9) * step;
  for (let v = start; v <= max + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  return { ticks, step };
}

/**
 * y-range for the loss axis. Single spikes (e.g. a bad batch) would flatten the curve, so the
 * top is the `quantile` of the finite values plus headroom, unless the spike is small anyway.
 * @param {number[]} values
 * @param {{quantile?: number, headroom?: number}} [opts]
 * @returns {{min: number, max: number, clipped: boolean}|null} null when no finite values
 */
export function lossRange(values, { quantile = 0.98, headroom = 0.1 } = {}) {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const lo = v[0];
  const hi = v[v.length - 1];
  const q = v[Math.min(v.length - 1, Math.floor(quantile * (v.length - 1)))];
  let top = hi;
  let clipped = false;
  const median = v[Math.floor((v.length - 1) / 2)];
  // Clip only isolated outliers that would squash the curve: the top few values lie far above the
  // bulk (relative to its spread), would take over half the plot height, and are not a small wobble.
  // A steadily decaying loss has a wide bulk, so its early values are kept.
  if (v.length >= 20 && hi - q > 3 * (q - median) && hi - lo > 2 * (q - lo) && hi - q > 0.25 * Math.abs(q)) {
    top = q;
    clipped = true;
  }
  const span = top - lo || Math.abs(top) || 1;
  return { min: Math.max(lo >= 0 ? 0 : -Infinity, lo - span * headroom), max: top + span * headroom, clipped };
}

/**
 * [min, max] of the finite values (null when none); a flat series gets a small pad and reports its
 * one value as `flat`.
 */
export function valueRange(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const x of values) {
    if (!Number.isFinite(x)) continue;
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  if (lo === Infinity) return null;
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return { min: lo - pad, max: hi + pad, flat: lo };
  }
  return { min: lo, max: hi };
}

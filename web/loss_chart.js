// LoRA Loop live loss chart: a DOM widget with a <canvas> on every "Train LoRA" node.
//
// Protocol (the Python side in nodes/ sends exactly this):
// - live, throttled: PromptServer.instance.send_sync("lora_loop.progress", detail, client_id) with
//   detail = {node, display_node, prompt_id, step, total, points: [[step, loss, lr], ...] (new since
//   the previous event), elapsed, eta (seconds or null), status: "training"|"done"|"cancelled"|"error"}.
//   `node` / `display_node` are execution ids ("12", or "5:3" inside a subgraph).
// - final: the node's UI output {lora_loop_chart: [{steps, loss, lr, total, elapsed, status}]}, which
//   reaches node.onExecuted live and when a finished run is reopened from the queue/history.
//
// The widget is display-only: it is never serialized into the workflow or the prompt.
// This file lives in web/, served at /extensions/<pack folder>/loss_chart.js, hence "../../scripts".
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ChartState } from "./lib/chart_core.js";
import { drawChart } from "./lib/draw.js";
import { findNodeByExecutionId } from "./lib/exec_id.js";

const EXTENSION_NAME = "lora_loop.lossChart";
const NODE_CLASS = "LoraLoop_TrainLoRA";
const EVENT = "lora_loop.progress";
const OUTPUT_KEY = "lora_loop_chart";
const WIDGET_NAME = "lora_loop_chart";
const CHART = Symbol.for("lora_loop.chart"); // per-node chart handle
const MIN_HEIGHT = 160;

/** Theme colours from the frontend's CSS variables, with the draw.js defaults as fallback. */
function themeColors(el) {
  const css = getComputedStyle(el);
  const pick = (name) => css.getPropertyValue(name).trim() || undefined;
  const colors = { background: pick("--comfy-input-bg"), text: pick("--descrip-text") ?? pick("--input-text") };
  return Object.fromEntries(Object.entries(colors).filter(([, v]) => v));
}

/** One chart: its element tree, state and redraw scheduling. */
class NodeChart {
  constructor() {
    this.state = new ChartState();
    this.el = document.createElement("div");
    this.el.className = "lora-loop-chart";
    this.el.dataset.testid = "lora-loop-chart";
    Object.assign(this.el.style, {
      display: "flex",
      flexDirection: "column",
      width: "100%",
      height: "100%",
      minHeight: `${MIN_HEIGHT}px`,
      boxSizing: "border-box",
      overflow: "hidden",
    });
    this.headerEl = document.createElement("div");
    this.headerEl.className = "lora-loop-chart-header";
    Object.assign(this.headerEl.style, {
      font: "11px sans-serif",
      padding: "2px 4px",
      whiteSpace: "nowrap",
      overflow: "hidden",
      textOverflow: "ellipsis",
      color: "var(--descrip-text, #aaa)",
    });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, { flex: "1 1 auto", width: "100%", minHeight: "0", display: "block" });
    this.el.append(this.headerEl, this.canvas);
    this._frame = 0;
    this._observer = typeof ResizeObserver === "function" ? new ResizeObserver(() => this.scheduleDraw()) : null;
    this._observer?.observe(this.el);
    this.refresh();
  }

  /** Update the test/inspection attributes and header now; draw on the next animation frame. */
  refresh() {
    const s = this.state;
    this.el.dataset.points = String(s.store.count);
    this.el.dataset.step = String(s.step);
    this.el.dataset.total = String(s.total);
    this.el.dataset.status = s.status;
    this.headerEl.textContent = s.header();
    this.scheduleDraw();
  }

  scheduleDraw() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this.draw();
    });
  }

  draw() {
    if (!this.el.isConnected) return; // e.g. inside a closed subgraph; drawn when shown (resize)
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (w < 2 || h < 2) return;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawChart(ctx, w, h, this.state, themeColors(this.el));
  }

  dispose() {
    this._observer?.disconnect();
    if (this._frame) cancelAnimationFrame(this._frame);
    this._frame = 0;
  }
}

function attachChart(node) {
  if (node[CHART]) return node[CHART];
  const chart = new NodeChart();
  const widget = node.addDOMWidget(WIDGET_NAME, "lora_loop_chart", chart.el, {
    serialize: false, // graphToPrompt checks options.serialize
    getMinHeight: () => MIN_HEIGHT,
  });
  widget.serialize = false; // LGraphNode.serialize (workflow widgets_values) checks widget.serialize
  node[CHART] = chart;

  const onExecuted = node.onExecuted;
  node.onExecuted = function (output) {
    const result = onExecuted?.apply(this, arguments);
    const final = output?.[OUTPUT_KEY]?.[0];
    if (final && chart.state.rebuild(final)) chart.refresh();
    return result;
  };
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    chart.dispose();
    return onRemoved?.apply(this, arguments);
  };
  return chart;
}

function onProgress(event) {
  const detail = event?.detail;
  if (!detail) return;
  const graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const id of [detail.node, detail.display_node]) {
    if (id === undefined || id === null) continue;
    node = findNodeByExecutionId(graph, id);
    if (node?.[CHART]) break;
  }
  const chart = node?.[CHART];
  if (!chart) return; // not in the open workflow; the final output rebuilds it later
  chart.state.applyEvent(detail);
  chart.refresh();
}

app.registerExtension({
  name: EXTENSION_NAME,
  setup() {
    api.addEventListener(EVENT, onProgress);
  },
  nodeCreated(node) {
    if (node?.comfyClass === NODE_CLASS) attachChart(node);
  },
});

// LoRA Loop's frontend extension: the live loss chart on every Train LoRA node, what Save LoRA saved, the
// outputs of a finished job reopened from the queue, and workflows made for an earlier LoRA Loop.
//
// Protocol (the Python side in nodes/ sends exactly this):
// - live, throttled: PromptServer.instance.send_sync("lora_loop.progress", detail, client_id) with
//   detail = {node, display_node, prompt_id, step, total, points: [[step, loss, lr], ...] (new since
//   the previous event), elapsed, eta (seconds or null), status: "training"|"done"|"cancelled"|"error",
//   phase (what runs between steps, e.g. "sampling preview 1/2, step 3/20"), notes (what was saved),
//   validation: [[step, validation loss], ...] (new since the previous event; only with a Validation node)}.
//   `node` / `display_node` are execution ids ("12", or "5:3" inside a subgraph).
// - final: Train LoRA's UI output {lora_loop_chart: [{steps, loss, lr, total, elapsed, status, notes,
//   validation (only with a Validation node)}]} and
//   Save LoRA's {lora_loop_saved: [{name, size, text}]}. They reach node.onExecuted live, the
//   onNodeOutputsUpdated hook when the frontend restores outputs (switching workflow tabs), and are
//   fetched from /history/<prompt id> when a finished job is opened from the queue ("Job <id>.json").
//
// The widgets are display-only: they are never serialized into the workflow or the prompt.
// This file lives in web/, served at /extensions/<pack folder>/loss_chart.js, hence "../../scripts".
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ChartState } from "./lib/chart_core.js";
import { drawChart } from "./lib/draw.js";
import { findNodeByExecutionId } from "./lib/exec_id.js";
import { clearMoved, describe as describeMigration, migrateGraph } from "./lib/legacy.js";

const EXTENSION_NAME = "lora_loop.lossChart";
const NODE_CLASS = "LoraLoop_TrainLoRA";
const SAVE_CLASS = "LoraLoop_SaveLoRA";
const EVENT = "lora_loop.progress";
const SAVE_EVENT = "lora_loop.saving"; // {node, display_node, text}: Save LoRA is saving / verifying
const OUTPUT_KEY = "lora_loop_chart";
const SAVED_KEY = "lora_loop_saved";
const WIDGET_NAME = "lora_loop_chart";
const CHART = Symbol.for("lora_loop.chart"); // per-node chart handle
const SAVED = Symbol.for("lora_loop.saved"); // per-node "what was saved" element
const MIN_HEIGHT = 160;
const LAYOUTS_URL = new URL("./lib/legacy_layouts.json", import.meta.url);
const JOB_PATH = /Job ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/i;

/** Theme colours from the frontend's CSS variables, with the draw.js defaults as fallback. */
function themeColors(el) {
  const css = getComputedStyle(el);
  const pick = (name) => css.getPropertyValue(name).trim() || undefined;
  const colors = { background: pick("--comfy-input-bg"), text: pick("--descrip-text") ?? pick("--input-text") };
  return Object.fromEntries(Object.entries(colors).filter(([, v]) => v));
}

/** A <div> with our class, a data-testid of the same name and the given style. */
function element(name, style) {
  const el = document.createElement("div");
  el.className = name;
  el.dataset.testid = name;
  Object.assign(el.style, style);
  return el;
}

const SMALL_TEXT = { font: "11px sans-serif", color: "var(--descrip-text, #aaa)" };

/** One chart: its element tree, state and redraw scheduling. */
class NodeChart {
  constructor() {
    this.state = new ChartState();
    this.el = element("lora-loop-chart", {
      display: "flex", flexDirection: "column", width: "100%", height: "100%", minHeight: `${MIN_HEIGHT}px`,
      boxSizing: "border-box", overflow: "hidden",
    });
    this.headerEl = element("lora-loop-chart-header", {
      ...SMALL_TEXT, padding: "2px 4px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
    });
    this.noteEl = element("lora-loop-chart-note", { ...SMALL_TEXT, padding: "0 4px 2px", overflowWrap: "anywhere" });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, { flex: "1 1 auto", width: "100%", minHeight: "0", display: "block" });
    this.el.append(this.headerEl, this.noteEl, this.canvas);
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
    this.el.dataset.validation = String(s.validation.steps.length);
    this.headerEl.textContent = s.header();
    this.headerEl.title = s.header();
    this.noteEl.textContent = s.note();
    this.noteEl.style.display = s.note() ? "block" : "none";
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
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    chart.dispose();
    return onRemoved?.apply(this, arguments);
  };
  return chart;
}

/** A read-only text under Save LoRA's widgets: what was saved (and what verify found). */
function attachSavedText(node) {
  if (node[SAVED]) return node[SAVED];
  const el = element("lora-loop-saved", {
    font: "12px sans-serif", padding: "4px", whiteSpace: "pre-wrap", overflowWrap: "anywhere",
    color: "var(--input-text, #ddd)", boxSizing: "border-box",
  });
  el.textContent = "not saved yet";
  const widget = node.addDOMWidget("lora_loop_saved", "lora_loop_saved", el, { serialize: false, getMinHeight: () => 36 });
  widget.serialize = false;
  node[SAVED] = el;
  return el;
}

/** Show a node's UI output (Train LoRA's chart record, Save LoRA's saved file). */
function applyOutput(node, output) {
  const final = output?.[OUTPUT_KEY]?.[0];
  if (final && node[CHART]?.state.rebuild(final)) node[CHART].refresh();
  const saved = output?.[SAVED_KEY]?.[0];
  if (saved && node[SAVED]) node[SAVED].textContent = saved.text ?? `saved ${saved.name}`;
}

function graphRoot() {
  return app.rootGraph ?? app.graph;
}

/** Node for an output key: an execution id ("5:3") in 1.35, a node locator ("<subgraph uuid>:3") in 1.5x. */
function nodeForKey(key) {
  const root = graphRoot();
  const node = findNodeByExecutionId(root, key);
  if (node) return node;
  const [graphId, localId] = String(key).split(":");
  const sub = root?.subgraphs?.get?.(graphId);
  return sub?.getNodeById?.(localId) ?? sub?.getNodeById?.(Number(localId)) ?? null;
}

function applyOutputs(outputs) {
  for (const [key, output] of Object.entries(outputs ?? {})) {
    const node = nodeForKey(key);
    if (node && (node[CHART] || node[SAVED])) applyOutput(node, output);
  }
}

/** A finished job opened from the queue ("Job <prompt id>.json"): show its outputs on our nodes. */
async function replayJob() {
  const path = app.extensionManager?.workflow?.activeWorkflow?.path ?? "";
  const m = JOB_PATH.exec(path);
  if (!m) return;
  try {
    const res = await api.fetchApi(`/history/${m[1]}`);
    if (!res.ok) return;
    const entry = (await res.json())?.[m[1]];
    applyOutputs(entry?.outputs);
  } catch (err) {
    console.warn("[lora_loop] could not read the job's outputs from /history", err);
  }
}

function onSaving(event) {
  const detail = event?.detail;
  for (const id of [detail?.node, detail?.display_node]) {
    if (id === undefined || id === null) continue;
    const node = findNodeByExecutionId(graphRoot(), id);
    if (node?.[SAVED]) {
      node[SAVED].textContent = String(detail.text ?? "");
      return;
    }
  }
}

function onProgress(event) {
  const detail = event?.detail;
  if (!detail) return;
  const graph = graphRoot();
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

// ---- workflows made for an earlier LoRA Loop -------------------------------------------------------
const legacy = { layouts: null, defs: {} };

async function loadLegacyLayouts() {
  try {
    const res = await fetch(LAYOUTS_URL);
    legacy.layouts = await res.json();
    const types = new Set([...Object.keys(legacy.layouts.nodes), ...Object.values(legacy.layouts.sockets)]);
    await Promise.all([...types].map(async (t) => {
      const r = await api.fetchApi(`/object_info/${t}`);
      if (r.ok) Object.assign(legacy.defs, await r.json());
    }));
  } catch (err) {
    console.warn("[lora_loop] could not load the earlier node layouts; old workflows are not converted", err);
  }
}

function migrateOnLoad(graphData) {
  if (!legacy.layouts || !graphData) return;
  const report = migrateGraph(graphData, legacy.layouts, legacy.defs);
  if (!report.length) return;
  const message = describeMigration(report, (t) => legacy.defs[t]?.display_name ?? t);
  console.warn(`[lora_loop] ${report.length} node(s) of an earlier LoRA Loop were updated.`, message ?? "nothing was lost");
  if (message) {
    app.extensionManager?.toast?.add?.({ severity: "warn", summary: "LoRA Loop: update this workflow", detail: message });
  }
}

/**
 * A new node of ours starts with its seeds "fixed" (the frontend's default, "randomize", would change the training
 * seed on every Run, so a re-queue would retrain from scratch instead of continuing). Loaded workflows keep their
 * own value: configure() runs after nodeCreated.
 */
function fixSeedControl(node) {
  if (!String(node?.comfyClass ?? "").startsWith("LoraLoop_")) return;
  for (const w of node.widgets ?? []) if (w.name === "control_after_generate") w.value = "fixed";
}

/** Connecting a settings node to a migrated node clears the moved values it now carries (legacy.js). */
function watchSettingsSockets(node) {
  if (!legacy.layouts?.nodes?.[node?.comfyClass]) return;
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (type, index, connected) {
    const result = onConnectionsChange?.apply(this, arguments);
    const input = this.inputs?.[index];
    const linked = input?.link !== null && input?.link !== undefined; // a real link, not a slot being (re)built
    if (type === (window.LiteGraph?.INPUT ?? 1) && connected && linked && legacy.layouts.sockets[input.name]) {
      clearMoved(this, input.name, legacy.layouts);
    }
    return result;
  };
}

app.registerExtension({
  name: EXTENSION_NAME,
  async setup() {
    api.addEventListener(EVENT, onProgress);
    api.addEventListener(SAVE_EVENT, onSaving);
    await loadLegacyLayouts();
  },
  beforeConfigureGraph(graphData) {
    migrateOnLoad(graphData);
  },
  afterConfigureGraph() {
    setTimeout(replayJob, 0); // the active workflow's path is set after configuring (1.35)
  },
  afterLoadGraph() {
    replayJob(); // 1.5x
  },
  onNodeOutputsUpdated(outputs) {
    applyOutputs(outputs);
  },
  nodeCreated(node) {
    fixSeedControl(node);
    watchSettingsSockets(node);
    if (node?.comfyClass === NODE_CLASS) attachChart(node);
    if (node?.comfyClass === SAVE_CLASS) attachSavedText(node);
    if (node?.comfyClass === NODE_CLASS || node?.comfyClass === SAVE_CLASS) {
      const onExecuted = node.onExecuted;
      node.onExecuted = function (output) {
        const result = onExecuted?.apply(this, arguments);
        applyOutput(this, output);
        return result;
      };
    }
  },
});

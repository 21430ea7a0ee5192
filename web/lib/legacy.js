// Opening a workflow made for an earlier LoRA Loop (pure: no DOM, no ComfyUI imports; node --test runs it).
//
// web/lib/legacy_layouts.json lists the widget layouts of earlier releases and where each setting that left a
// node lives now ([settings socket on the node, widget on the settings node]). A UI workflow stores widget
// values by position, so opening an old one as it is would shift values into the wrong widgets. migrateGraph
// rewrites such nodes in the workflow JSON before the frontend configures the graph: the widgets that stayed
// keep their values, sockets that no longer exist are dropped with their links, and the moved values are kept
// in the node's `lora_loop_moved` property, where the Python side (nodes/legacy.py) finds them and stops the
// run while no settings node carries them.

const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const SEED_NAMES = new Set(["seed", "noise_seed"]);
export const PROPERTY = "lora_loop_moved";

function specOf(def, name) {
  return def?.input?.required?.[name] ?? def?.input?.optional?.[name];
}

function isWidget(spec) {
  return Array.isArray(spec) && (Array.isArray(spec[0]) || WIDGET_TYPES.has(spec[0]));
}

/** Input names of a node definition (object_info format) in their declared order. */
export function inputNames(def) {
  const order = def?.input_order;
  if (order) return [...(order.required ?? []), ...(order.optional ?? [])];
  return [...Object.keys(def?.input?.required ?? {}), ...Object.keys(def?.input?.optional ?? {})];
}

/**
 * Widget names in the order a UI workflow stores their values, with "control_after_generate" after the INT
 * inputs that have one (as the frontend adds it).
 */
export function widgetOrder(def) {
  const out = [];
  for (const name of inputNames(def)) {
    const spec = specOf(def, name);
    if (!isWidget(spec)) continue;
    out.push(name);
    const opts = spec[1] ?? {};
    if (spec[0] === "INT" && (opts.control_after_generate || SEED_NAMES.has(name))) out.push("control_after_generate");
  }
  return out;
}

/** The default value of a widget input. */
export function defaultOf(def, name) {
  if (name === "control_after_generate") return "fixed";
  const spec = specOf(def, name);
  if (!spec) return undefined;
  const opts = spec[1] ?? {};
  if ("default" in opts) return opts.default;
  if (Array.isArray(spec[0])) return spec[0][0];
  if (spec[0] === "COMBO") return (opts.options ?? [])[0];
  return { INT: 0, FLOAT: 0, STRING: "", BOOLEAN: false }[spec[0]];
}

function same(a, b) {
  if (typeof a === "number" && typeof b === "number") return Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b));
  return a === b;
}

/**
 * Rewrite the LoRA Loop nodes of `graph` (a UI workflow, changed in place) that still have an earlier layout.
 * @param {object} graph workflow JSON ({nodes, links, definitions?: {subgraphs: [{nodes, links}]}})
 * @param {object} layouts the parsed legacy_layouts.json
 * @param {Record<string, object>} defs object_info node definitions by node type (the nodes and settings nodes)
 * @returns {{id: number|string, type: string, title: string, lost: {name: string, value: any, socket: string,
 *            widget: string, settingsType: string}[]}[]} one entry per migrated node
 */
export function migrateGraph(graph, layouts, defs) {
  const report = [];
  const graphs = [graph, ...(graph?.definitions?.subgraphs ?? [])];
  for (const g of graphs) {
    for (const node of g?.nodes ?? []) {
      const entry = migrateNode(node, g, layouts, defs);
      if (entry) report.push(entry);
    }
  }
  return report;
}

function migrateNode(node, graph, layouts, defs) {
  const def = defs[node?.type];
  const values = node?.widgets_values;
  if (!def || !Array.isArray(values)) return null;
  const current = widgetOrder(def);
  if (values.length === current.length) return null;
  const layout = (layouts?.nodes?.[node.type] ?? []).find((l) => l.widgets.length === values.length);
  if (!layout) return null;
  const old = Object.fromEntries(layout.widgets.map((name, i) => [name, values[i]]));
  for (const [name, [widget, map]] of Object.entries(layout.renamed ?? {})) {
    const key = JSON.stringify(old[name]);
    if (name in old && !(widget in old) && map && key in map) old[widget] = map[key];
  }
  node.widgets_values = current.map((name) => (name in old ? old[name] : defaultOf(def, name)));
  const moved = {};
  const lost = [];
  for (const [name, [socket, widget]] of Object.entries(layout.moved)) {
    if (!(name in old)) continue;
    moved[name] = old[name];
    const settingsType = layouts.sockets[socket];
    if (!same(old[name], defaultOf(defs[settingsType], widget))) lost.push({ name, value: old[name], socket, widget, settingsType });
  }
  for (const name of dropStaleInputs(node, graph, new Set(inputNames(def)))) {
    const [socket, widget] = layout.moved_links?.[name] ?? [];
    if (!socket) continue;
    moved[name] = layouts.link; // a link cannot move to the settings node by itself
    lost.push({ name, value: layouts.link, socket, widget, settingsType: layouts.sockets[socket], link: true });
  }
  node.properties = { ...(node.properties ?? {}), [PROPERTY]: moved };
  return { id: node.id, type: node.type, title: node.title ?? def.display_name ?? node.type, lost };
}

/**
 * A settings socket got connected: the moved values it carries are no longer at risk, so they leave the node's
 * property (and the property goes when it is empty). Returns true when something was removed.
 */
export function clearMoved(node, socket, layouts) {
  const moved = node?.properties?.[PROPERTY];
  if (!moved) return false;
  const routes = {};
  for (const l of layouts?.nodes?.[node.type ?? node.comfyClass] ?? []) Object.assign(routes, l.moved, l.moved_links ?? {});
  let removed = false;
  for (const name of Object.keys(moved)) {
    if (routes[name]?.[0] === socket) {
      delete moved[name];
      removed = true;
    }
  }
  if (!Object.keys(moved).length) delete node.properties[PROPERTY];
  return removed;
}

/**
 * Remove input slots the node no longer has (and their links); renumber the links of the remaining slots.
 * Returns the names of the removed slots that had a link.
 */
function dropStaleInputs(node, graph, names) {
  if (!Array.isArray(node.inputs)) return [];
  const links = Array.isArray(graph?.links) ? graph.links : [];
  const linkOf = (id) => links.find((l) => (Array.isArray(l) ? l[0] : l?.id) === id);
  const kept = [];
  const dropped = new Set();
  const droppedNames = [];
  for (const input of node.inputs) {
    if (names.has(input.name)) kept.push(input);
    else if (input.link != null) {
      dropped.add(input.link);
      droppedNames.push(input.name);
    }
  }
  kept.forEach((input, slot) => {
    const l = input.link != null ? linkOf(input.link) : null;
    if (Array.isArray(l)) l[4] = slot;
    else if (l) l.target_slot = slot;
  });
  node.inputs = kept;
  if (!dropped.size) return droppedNames;
  graph.links = links.filter((l) => !dropped.has(Array.isArray(l) ? l[0] : l?.id));
  for (const other of graph.nodes ?? []) {
    for (const out of other.outputs ?? []) if (Array.isArray(out.links)) out.links = out.links.filter((id) => !dropped.has(id));
  }
  return droppedNames;
}

/** One message for the user about the migrated nodes (null when nothing was lost). */
export function describe(report, displayName = (t) => t) {
  const nodes = report.filter((r) => r.lost.length);
  if (!nodes.length) return null;
  const parts = nodes.map((r) => {
    const bySocket = new Map();
    for (const l of r.lost) bySocket.set(l.socket, [...(bySocket.get(l.socket) ?? []), l]);
    const show = (l) => (l.link ? `${l.widget} connected (as '${l.name}' was)` : `${l.widget}=${JSON.stringify(l.value)}`);
    const how = [...bySocket.entries()].map(([socket, ls]) =>
      `add a '${displayName(ls[0].settingsType)}' node with ${ls.map(show).join(", ")} and connect it to '${socket}'`);
    return `${r.title} (#${r.id}): ${how.join("; ")}`;
  });
  return "This workflow was made for an earlier LoRA Loop. Settings that now live on settings nodes are set in it " +
    "and would be lost, so running it stops until they are moved: " + parts.join(". ") +
    ". (Double-click the canvas and search 'LoRA Loop', or start from the updated template.) The other values were kept.";
}

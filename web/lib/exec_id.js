// Map a ComfyUI execution id to a LiteGraph node. Pure: works on any object with the graph shape
// the frontend uses (graph.getNodeById(id), subgraph nodes expose `.subgraph`), so node --test can
// check it with plain objects.
//
// Execution ids: a top-level node's id is String(node.id); a node inside a subgraph is the colon
// path of the subgraph-node ids leading to it, ending with its id inside the innermost subgraph
// ("5:3", "5:7:3"). This mirrors getNodeByExecutionId in ComfyUI_frontend
// src/utils/graphTraversalUtil.ts (1.35.x), which extensions cannot import.

/**
 * @param {string|number|null|undefined} executionId
 * @returns {string[]|null} the path segments, or null if the id is empty/malformed
 */
export function parseExecutionId(executionId) {
  if (executionId === null || executionId === undefined) return null;
  const parts = String(executionId).split(":");
  if (parts.some((p) => p.trim() === "")) return null;
  return parts;
}

function nodeById(graph, id) {
  if (!graph || typeof graph.getNodeById !== "function") return null;
  // LiteGraph ids are numbers for normal nodes; getNodeById compares loosely in most versions,
  // but try both forms so a strict lookup also succeeds.
  const asNumber = Number(id);
  return graph.getNodeById(id) ?? (Number.isFinite(asNumber) ? graph.getNodeById(asNumber) : null) ?? null;
}

/**
 * Find the node an execution id refers to, starting at the root graph.
 * @param {object} rootGraph the app's root LGraph
 * @param {string|number} executionId
 * @returns {object|null} the node, or null when any path segment does not resolve
 */
export function findNodeByExecutionId(rootGraph, executionId) {
  const parts = parseExecutionId(executionId);
  if (!parts || !rootGraph) return null;
  let graph = rootGraph;
  for (const id of parts.slice(0, -1)) {
    const holder = nodeById(graph, id);
    const sub = holder && (typeof holder.isSubgraphNode !== "function" || holder.isSubgraphNode()) ? holder.subgraph : null;
    if (!sub) return null;
    graph = sub;
  }
  return nodeById(graph, parts[parts.length - 1]);
}

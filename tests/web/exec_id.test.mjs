// node --test tests/web/   (execution id -> node, on plain graph-shaped objects)
import assert from "node:assert/strict";
import { test } from "node:test";

import { findNodeByExecutionId, parseExecutionId } from "../../web/lib/exec_id.js";

// Minimal stand-in for LGraph / Subgraph: numeric ids, strict lookup (=== on the stored key).
function graph(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { nodes, getNodeById: (id) => byId.get(id) ?? null };
}
const node = (id, extra = {}) => ({ id, ...extra });
const subgraphNode = (id, inner) => ({ id, subgraph: inner, isSubgraphNode: () => true });

const train = node(3, { comfyClass: "LoraLoop_TrainLoRA" });
const deep = node(9, { comfyClass: "LoraLoop_TrainLoRA" });
const inner2 = graph([deep]);
const inner = graph([train, subgraphNode(7, inner2)]);
const top = node(12, { comfyClass: "LoraLoop_TrainLoRA" });
const root = graph([top, subgraphNode(5, inner), node(6)]);

test("top-level id (string or number)", () => {
  assert.equal(findNodeByExecutionId(root, "12"), top);
  assert.equal(findNodeByExecutionId(root, 12), top);
});

test("colon paths walk into subgraphs", () => {
  assert.equal(findNodeByExecutionId(root, "5:3"), train);
  assert.equal(findNodeByExecutionId(root, "5:7:9"), deep);
});

test("unresolvable ids give null", () => {
  assert.equal(findNodeByExecutionId(root, "3"), null, "inner id alone is not a top-level node");
  assert.equal(findNodeByExecutionId(root, "6:3"), null, "6 is not a subgraph node");
  assert.equal(findNodeByExecutionId(root, "5:99"), null);
  assert.equal(findNodeByExecutionId(root, "5::3"), null);
  assert.equal(findNodeByExecutionId(root, ""), null);
  assert.equal(findNodeByExecutionId(null, "12"), null);
  assert.equal(findNodeByExecutionId(root, undefined), null);
});

test("parseExecutionId", () => {
  assert.deepEqual(parseExecutionId("5:7:9"), ["5", "7", "9"]);
  assert.deepEqual(parseExecutionId(12), ["12"]);
  assert.equal(parseExecutionId(":1"), null);
  assert.equal(parseExecutionId(null), null);
});

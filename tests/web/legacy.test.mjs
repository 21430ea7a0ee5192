// node --test tests/web/   (opening a workflow made for an earlier LoRA Loop; the real frontend run is in
// tests/browser/test_new_user_browser.py)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { clearMoved, defaultOf, describe, migrateGraph, PROPERTY, widgetOrder } from "../../web/lib/legacy.js";

const layouts = JSON.parse(readFileSync(new URL("../../web/lib/legacy_layouts.json", import.meta.url)));
const oldWorkflow = () => JSON.parse(readFileSync(new URL("../workflows/legacy/train_watch_generate_sd15.0.1.ui.json", import.meta.url)));

// node definitions in /object_info's shape, as the new release declares them (only what migration reads)
const defs = {
  LoraLoop_TrainLoRA: {
    display_name: "Train LoRA (LoRA Loop)",
    input: {
      required: { model: ["MODEL"], network: ["LORA_NETWORK"], dataset: ["LORA_DATASET"], steps: ["INT", { default: 500 }],
                  learning_rate: ["FLOAT", { default: 1e-4 }], optimizer: [["AdamW", "Adam"], { default: "AdamW" }],
                  lr_scheduler: [["constant", "cosine"], { default: "constant" }],
                  seed: ["INT", { default: 0, control_after_generate: true }] },
      optional: { clip: ["CLIP"], optimizer_settings: ["LORA_OPTIMIZER_SETTINGS"], noise_loss_settings: ["LORA_NOISE_LOSS_SETTINGS"],
                  checkpoint_settings: ["LORA_CHECKPOINT_SETTINGS"], preview_settings: ["LORA_PREVIEW_SETTINGS"],
                  output_name: ["STRING", { default: "my_lora" }],
                  memory: [["auto", "resident", "checkpointed", "streamed"], { default: "auto" }],
                  blocks_to_swap: ["INT", { default: 0 }] },
    },
    input_order: {
      required: ["model", "network", "dataset", "steps", "learning_rate", "optimizer", "lr_scheduler", "seed"],
      optional: ["clip", "optimizer_settings", "noise_loss_settings", "checkpoint_settings", "preview_settings",
                 "output_name", "memory", "blocks_to_swap"],
    },
  },
  LoraLoop_LoadDataset: {
    input: { required: { path: ["STRING", { default: "my_dataset" }], caption_extension: ["STRING", { default: ".txt" }],
                         num_repeats: ["INT", { default: 1 }], class_tokens: ["STRING", { default: "" }] },
             optional: { caption_settings: ["LORA_CAPTION_SETTINGS"] } },
  },
  LoraLoop_PreviewSettings: { display_name: "Previews (LoRA Loop)",
    input: { required: { vae: ["VAE"] }, optional: { prompts: ["STRING", { default: "" }], negative: ["STRING", { default: "" }],
      sampler: [["euler"], { default: "euler" }], scheduler: [["normal"], { default: "normal" }], steps: ["INT", { default: 20 }],
      cfg: ["FLOAT", { default: 7 }], width: ["INT", { default: 512 }], height: ["INT", { default: 512 }],
      seed: ["INT", { default: 0 }], every_n_steps: ["INT", { default: 0 }] } } },
  LoraLoop_CheckpointSettings: { display_name: "Checkpoints & Resume (LoRA Loop)",
    input: { optional: { save_every_n_steps: ["INT", { default: 0 }], save_every_n_epochs: ["INT", { default: 0 }],
      save_last_n: ["INT", { default: 0 }], save_dtype: [["fp16"], { default: "fp16" }], resume_from: ["STRING", { default: "" }] } } },
  LoraLoop_OptimizerSettings: { input: { optional: { lr_warmup_steps: ["INT", { default: 0 }],
    gradient_accumulation_steps: ["INT", { default: 1 }], text_encoder_lr: ["FLOAT", { default: 5e-5 }],
    max_grad_norm: ["FLOAT", { default: 1 }], mixed_precision: [["auto"], { default: "auto" }] } } },
  LoraLoop_NoiseLossSettings: { input: { optional: Object.fromEntries(
    [["noise_offset", 0], ["min_snr_gamma", 0], ["min_timestep", 0], ["max_timestep", 1000], ["sigmoid_scale", 1],
     ["discrete_flow_shift", 3], ["guidance_scale", 1]].map(([k, d]) => [k, ["FLOAT", { default: d }]])
    .concat([["timestep_sampling", [["model"], { default: "model" }]], ["loss_type", [["l2"], { default: "l2" }]]])) } },
  LoraLoop_CaptionSettings: { input: { optional: { shuffle_caption: ["BOOLEAN", { default: false }], keep_tokens: ["INT", { default: 0 }],
    caption_dropout_rate: ["FLOAT", { default: 0 }], flip_aug: ["BOOLEAN", { default: false }] } } },
};

test("widget order follows the declared inputs, with control_after_generate after the seed", () => {
  assert.deepEqual(widgetOrder(defs.LoraLoop_TrainLoRA),
    ["steps", "learning_rate", "optimizer", "lr_scheduler", "seed", "control_after_generate", "output_name", "memory",
     "blocks_to_swap"]);
  assert.equal(defaultOf(defs.LoraLoop_TrainLoRA, "optimizer"), "AdamW");
});

test("the old watch template keeps its values and reports what moved", () => {
  const wf = oldWorkflow();
  const report = migrateGraph(wf, layouts, defs);
  const train = wf.nodes.find((n) => n.type === "LoraLoop_TrainLoRA");
  assert.deepEqual(train.widgets_values, [1000, 0.0001, "AdamW", "constant", 0, "fixed", "my_lora", "auto", 0]);
  assert.equal(train.properties[PROPERTY].preview_prompts, "a photo of sks dog on the beach\na photo of sks dog in the snow");
  assert.equal(train.properties[PROPERTY].save_every_n_steps, 250);
  // the vae / train_state sockets left Train LoRA: their slots and links are gone, the other links renumbered
  assert.deepEqual(train.inputs.map((i) => i.name), ["model", "network", "dataset", "clip"]);
  for (const [i, input] of train.inputs.entries()) {
    const link = wf.links.find((l) => l[0] === input.link);
    assert.ok(link && link[3] === train.id && link[4] === i, `link of ${input.name}`);
  }
  assert.ok(!wf.links.some((l) => l[3] === train.id && l[4] >= train.inputs.length));
  const entry = report.find((r) => r.type === "LoraLoop_TrainLoRA");
  // only values that differ from the settings nodes' defaults would be lost (512 x 512 previews are the default)
  // (and the VAE link, which cannot follow to the Previews node by itself)
  assert.deepEqual(entry.lost.map((l) => l.name).sort(),
    ["preview_every_n_steps", "preview_negative", "preview_prompts", "preview_seed", "save_every_n_steps", "save_last_n", "vae"]);
  assert.equal(train.properties[PROPERTY].vae, layouts.link);
  const msg = describe(report, (t) => defs[t]?.display_name ?? t);
  assert.match(msg, /earlier LoRA Loop/);
  assert.match(msg, /add a 'Previews \(LoRA Loop\)' node with prompts=.*every_n_steps=100, vae connected .* and connect it to 'preview_settings'/);
  assert.match(msg, /'Checkpoints & Resume \(LoRA Loop\)' node with save_every_n_steps=250, save_last_n=2/);
  assert.match(msg, /vae connected \(as 'vae' was\)/);
  const ds = wf.nodes.find((n) => n.type === "LoraLoop_LoadDataset");
  assert.deepEqual(ds.widgets_values, ["my_dataset", ".txt", 1, ""]);
  assert.equal(report.find((r) => r.type === "LoraLoop_LoadDataset").lost.length, 0); // all defaults
});

test("a current workflow is left alone, and migrating twice changes nothing", () => {
  const wf = oldWorkflow();
  migrateGraph(wf, layouts, defs);
  const once = JSON.stringify(wf);
  assert.deepEqual(migrateGraph(wf, layouts, defs), []);
  assert.equal(JSON.stringify(wf), once);
  assert.equal(describe([]), null);
});

test("connecting a settings node clears the values it carries", () => {
  const wf = oldWorkflow();
  migrateGraph(wf, layouts, defs);
  const train = wf.nodes.find((n) => n.type === "LoraLoop_TrainLoRA");
  assert.equal(clearMoved(train, "preview_settings", layouts), true);
  const left = Object.keys(train.properties[PROPERTY]);
  assert.ok(!left.some((n) => n.startsWith("preview_") || n === "vae"), left);
  assert.ok(left.includes("save_every_n_steps"));
  for (const socket of ["checkpoint_settings", "optimizer_settings", "noise_loss_settings"]) clearMoved(train, socket, layouts);
  assert.equal(train.properties[PROPERTY], undefined);
  assert.equal(clearMoved(train, "preview_settings", layouts), false);
});

test("a 0.2 Train LoRA's gradient_checkpointing becomes the memory mode", () => {
  for (const [gc, memory] of [[true, "checkpointed"], [false, "auto"]]) {
    const node = { id: 7, type: "LoraLoop_TrainLoRA", inputs: [], outputs: [],
                   widgets_values: [300, 0.0002, "Adam", "cosine", 5, "fixed", "mine", gc] };
    const report = migrateGraph({ nodes: [node], links: [] }, layouts, defs);
    assert.deepEqual(node.widgets_values, [300, 0.0002, "Adam", "cosine", 5, "fixed", "mine", memory, 0]);
    assert.deepEqual(report[0].lost, []);
  }
});

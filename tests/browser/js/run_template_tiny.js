// Runs a shipped template for real on the tiny test model (page.evaluate(thisFile, [workflow, options])):
// loads the UI workflow, swaps its model loaders for LoraLoopTest_TinyModel (same MODEL/CLIP/VAE outputs,
// links kept), shrinks the sizes and steps, and presses Run the way the frontend does. window.__done turns true
// when the prompt ends; window.__geometry() reports where Train LoRA, its chart and its preview are on screen.
async ([wf, opts]) => {
  const app = window.app, api = app.api ?? window.comfyAPI.api.api;
  await app.loadGraphData(wf);
  const g = app.rootGraph ?? app.graph;
  const byType = (t) => g.nodes.find((n) => n.comfyClass === t || n.type === t);
  const set = (n, name, v) => { const w = n.widgets.find((w) => w.name === name); if (!w) throw new Error(name); w.value = v; };
  // the tiny real-architecture model stands in for the model loaders (same outputs: MODEL 0, CLIP 1, VAE 2)
  const OUTPUTS = { CheckpointLoaderSimple: [0, 1, 2], UNETLoader: [0], DualCLIPLoader: [1], CLIPLoader: [1],
                    TripleCLIPLoader: [1], VAELoader: [2] };
  const loaders = g.nodes.filter((n) => OUTPUTS[n.type]);
  const tiny = LiteGraph.createNode("LoraLoopTest_TinyModel");
  tiny.pos = [...loaders[0].pos];
  g.add(tiny);
  tiny.widgets.find((w) => w.name === "family").value = opts.family ?? "sd15";
  for (const loader of loaders) {
    OUTPUTS[loader.type].forEach((tinySlot, slot) => {
      for (const linkId of [...(loader.outputs[slot].links ?? [])]) {
        const link = g.links.get ? g.links.get(linkId) : g.links[linkId];
        tiny.connect(tinySlot, g.getNodeById(link.target_id), link.target_slot);
      }
    });
    g.remove(loader);
  }
  tiny.collapse?.(true); // it stands where the loader was; collapsed it covers nothing
  set(byType("LoraLoop_BucketImages"), "resolution", 64);
  set(byType("LoraLoop_BucketImages"), "min_bucket_reso", 64);
  set(byType("LoraLoop_BucketImages"), "max_bucket_reso", 128);
  const train = byType("LoraLoop_TrainLoRA");
  set(train, "steps", opts.steps);
  if (opts.learning_rate) set(train, "learning_rate", opts.learning_rate);
  if (opts.seed !== undefined) set(train, "seed", opts.seed);
  const prev = byType("LoraLoop_PreviewSettings");
  if (prev) { set(prev, "steps", 2); set(prev, "width", 64); set(prev, "height", 64); set(prev, "every_n_steps", 2); set(prev, "cfg", 1.0); }
  const ckpts = byType("LoraLoop_CheckpointSettings");
  if (ckpts) set(ckpts, "save_every_n_steps", 2);
  set(byType("KSampler"), "steps", 1);
  const latent = byType("EmptyLatentImage") ?? byType("EmptySD3LatentImage");
  set(latent, "width", 64); set(latent, "height", 64);
  window.__done = false;
  api.addEventListener("execution_success", () => { window.__done = true; });
  window.__error = null;
  api.addEventListener("execution_error", (e) => { window.__error = e.detail; window.__done = true; });
  window.__geometry = () => {
    const c = app.canvas, ds = c.ds;
    const rect = c.canvas.getBoundingClientRect();
    const toScreen = (x, y) => [rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y + ds.offset[1]) * ds.scale];
    const title = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    const [x0, y0] = toScreen(train.pos[0], train.pos[1] - title);
    const [x1, y1] = toScreen(train.pos[0] + train.size[0], train.pos[1] + train.size[1]);
    const chart = train[Symbol.for("lora_loop.chart")].el.getBoundingClientRect();
    const cx = (chart.left + chart.right) / 2, cy = (chart.top + chart.bottom) / 2;
    const hit = document.elementFromPoint(cx, cy);
    return { node: [x0, y0, x1, y1], chart: [chart.left, chart.top, chart.right, chart.bottom],
             chartOnTop: !!hit && train[Symbol.for("lora_loop.chart")].el.contains(hit),
             previews: (train.imgs ?? []).length, status: train[Symbol.for("lora_loop.chart")].state.status,
             step: train[Symbol.for("lora_loop.chart")].state.step,
             canvas: [rect.left, rect.top, rect.right, rect.bottom], viewport: [window.innerWidth, window.innerHeight] };
  };
  await app.queuePrompt(0, 1);
  return "queued";
}

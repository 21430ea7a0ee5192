"""One training run on ComfyUI objects: clone, inject, load, train, hand back the trained clone.

This is the glue between the node and the plain-torch loop; everything that touches ComfyUI goes
through ``adapter``."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import adapter as ca
from . import distributed, validation
from .assemble import build_objective
from .checkpoints import CheckpointWriter, Saved, apply_state, capture_state
from .config import TrainConfig
from .encoded import EncodedDataset, has_masks
from .export import human_size
from .loop import StepInfo, Trainer, TrainingDiverged, TrainResult
from .memory import TrainingOutOfMemory, is_out_of_memory
from .previews import PreviewConfig, PreviewRunner
from .record import DatasetSummary, TrainingRecord, record_of
from .reporting import Eta, Progress
from .state import TrainState

log = logging.getLogger(__name__)


@dataclass
class SessionResult:
    model: Any              # ModelPatcher clone with the trained LoRA injected
    clip: Any               # CLIP clone with the text-encoder LoRA (or the input CLIP)
    network: Any            # the trained LoRANetwork (a copy; the input network is untouched)
    losses: list[float]
    lrs: list[float]
    record: TrainingRecord
    loop: TrainResult | None = None
    state: TrainState | None = None          # full resumable state after the last step
    start_step: int = 0                      # step the run resumed from (0 = fresh)
    images: torch.Tensor | None = None       # preview images (B, H, W, 3), None without previews
    checkpoints: list[Saved] = field(default_factory=list)


def _text_encoder(clip, max_token_length: int = 0):
    if clip is None:
        return None

    def encode(captions: list[str]) -> list:
        return [ca.encode_caption(clip, c, max_token_length) for c in captions]

    return encode


def _preview_runner(preview: PreviewConfig | None, mp, clip, vae, train_te: bool, on_image_step, reload):
    if preview is None or not preview.enabled:
        return None
    if vae is None:
        raise ValueError("previews need a VAE: connect the checkpoint's VAE to the Previews node's 'vae' input (or "
                         "clear its prompts)")
    if clip is None:
        raise ValueError("previews need a CLIP: connect the CLIP from Inject LoRA to Train LoRA (or clear the "
                         "Previews node's prompts)")
    cache: dict[str, Any] = {}

    def conds(text: str):
        if train_te:  # the text encoder changes while training: encode with the current LoRA
            return ca.encode_caption(clip, text)
        if text not in cache:
            cache[text] = ca.encode_caption(clip, text)
        return cache[text]

    if not train_te:  # encode once, before the model is loaded for training
        with torch.inference_mode(False), torch.no_grad():
            for spec in preview.prompt_specs():
                conds(spec.prompt)
                conds(spec.negative)

    def sample(prompt: str, negative: str, c: PreviewConfig, seed: int, on_step) -> torch.Tensor:
        return ca.sample_preview(mp, conds(prompt), conds(negative), vae, sampler=c.sampler, scheduler=c.scheduler,
                                 steps=c.steps, cfg=c.cfg, width=c.width, height=c.height, seed=seed,
                                 on_step=on_step)

    return PreviewRunner(preview, sample, after=reload, progress=on_image_step)


def _downscale(data: EncodedDataset) -> int | None:
    """Pixels per latent pixel of the VAE that encoded ``data`` (None without latents)."""
    for (index, _flip), latent in data.latents.items():
        width = data.plan.assignments[index].bucket[0]
        if latent.shape[-1]:
            return max(1, round(width / latent.shape[-1]))
    return None


def _plan_cond(data: EncodedDataset, clip):
    """One caption's CONDITIONING for planning: a cached one, else the first caption encoded now (captions that
    train with the text encoder, or change per epoch, are not cached); None without either."""
    cond = next(iter(data.text_conds.values()), None)
    if cond is None and clip is not None and data.dataset.images:
        cond = ca.encode_caption(clip, data.dataset.images[0].caption, data.max_token_length)
    return cond


def _memory_plan(mp, net, data: EncodedDataset, cfg: TrainConfig, progress: Progress, keep=(), clip=None):
    """The memory plan this run follows (``cfg.memory_mode``; ``auto`` asks ComfyUI what is free), logged and
    noted on the node, with the budget and every plan. (None, 0, []) when the step could not be measured: the
    mode's own defaults then apply."""
    from .batching import largest_batch
    from .memory import HEADROOM, choose_plan, fixed_plan, gib
    from .optim import optimizer_state_bytes

    batch, width, height = largest_batch(data.dataset, data.plan)
    progress.phase("planning memory", None)
    try:
        plans = ca.plan_training(mp, net, batch=batch, width=width, height=height,
                                 compute_dtype=ca.autocast_dtype(mp.load_device, cfg.mixed_precision),
                                 optimizer_state_bytes=optimizer_state_bytes(cfg.optimizer_name),
                                 cond=_plan_cond(data, clip), downscale=_downscale(data), clip=clip,
                                 caption=data.dataset.images[0].caption if data.dataset.images else None)
    except Exception as e:  # an architecture the meta-device step cannot run: train without a plan
        log.warning("LoRA Loop: could not estimate the memory of a step (%s: %s); memory=%s runs without a plan "
                    "(auto: checkpointed)",
                    type(e).__name__, e, cfg.memory_mode)
        progress.note(f"memory: no estimate ({type(e).__name__}); running "
                      f"{'checkpointed' if cfg.memory_mode == 'auto' else cfg.memory_mode}")
        return None, 0, []
    budget = ca.device_budget(mp, keep)
    if cfg.memory_mode == "auto":
        plan, fits = choose_plan(plans, budget)
    elif cfg.memory_mode == "streamed" and not cfg.blocks_to_swap:
        plan, fits = choose_plan([p for p in plans if p.mode == "streamed"], budget)
    else:
        plan = fixed_plan(plans, cfg.memory_mode, cfg.blocks_to_swap)
        fits = plan.estimate.total <= budget * (1 - HEADROOM)
    where = f"{gib(budget)} available on {mp.load_device}"
    log.info("LoRA Loop: memory plan for %d x %dx%d: %s; %s", batch, width, height, plan.describe(), where)
    progress.note(f"memory: {plan.describe()}; {where}")
    if not fits:
        lean = min(plans, key=lambda p: p.estimate.total)
        log.warning("LoRA Loop: the estimate (%s) exceeds what is available (%s); the leanest plan is %s. "
                    "Lower the resolution or batch size, or use an fp8 base model, if training runs out of memory",
                    gib(plan.estimate.total), where, lean.describe())
    return plan, budget, plans


def _out_of_memory_message(device_text: str, step: int, plan, plans, budget: int, saved_note: str) -> str:
    from .memory import gib, leaner_plan, setting_of

    ran = f"the plan {plan.describe()}" if plan is not None else "no memory plan"
    better = leaner_plan(plans, plan, budget) if plans else None
    if better is not None:
        fix = (f"Set Train LoRA's {setting_of(better)} (estimated {gib(better.estimate.total)}) and queue again: "
               "training continues from the last completed step.")
    else:
        fix = ("This is already the leanest plan: lower the resolution or batch size, use an fp8 base model "
               "(UNETLoader weight_dtype), a smaller network_dim, or free the device from other programs.")
    return (f"out of memory at step {step} with {ran} ({gib(budget)} were available when it was planned). {fix} "
            f"{saved_note} (device: {device_text})")


def _preview_out_of_memory_message(device_text: str, step: int, preview, saved_note: str) -> str:
    size = f"{preview.width} x {preview.height}, {preview.steps} steps" if preview is not None else "previews"
    return (f"out of memory while sampling the preview after step {step} ({size}): training itself fits. Lower the "
            "Previews node's width and height or its steps (or clear its prompts to sample none) and queue again: "
            f"training continues from the last completed step. {saved_note} (device: {device_text})")


def train(*, model, clip, network, data: EncodedDataset, cfg: TrainConfig, progress: Progress | None = None,
          checkpoints: CheckpointWriter | None = None, resume: TrainState | None = None,
          resume_source: str = "the training state", preview: PreviewConfig | None = None, vae=None,
          on_state: Callable[[TrainState], None] | None = None, model_name: str | None = None) -> SessionResult:
    """Train ``network`` (a copy) on ``data``. ``resume``: continue from a TrainState. ``checkpoints``:
    periodic saves, and the save on Cancel / divergence. ``preview`` + ``vae``: sample images during
    training. ``on_state`` receives the final state (also after Cancel) for re-queue continuation.
    ``model_name``: the checkpoint file ComfyUI loaded (for the file header). ``progress`` always hears how
    the run ended (``finish``), also when it fails before the first step."""
    if not isinstance(data, EncodedDataset):
        raise TypeError("Train LoRA needs the dataset from Encode Dataset (latents), got "
                        f"{type(data).__name__}; connect Load Dataset -> Bucket Images -> Encode Dataset")
    progress = progress or Progress()
    outcome = {"status": "error", "message": ""}
    try:
        return _train(model, clip, network, data, cfg, progress, checkpoints, resume, resume_source, preview,
                      vae, on_state, model_name, outcome)
    finally:
        progress.finish(outcome["status"], outcome["message"])


def _train(model, clip, network, data, cfg, progress, checkpoints, resume, resume_source, preview, vae, on_state,
           model_name, outcome) -> SessionResult:
    if cfg.masked_loss and not has_masks(data.dataset):
        raise ValueError("masked_loss: the dataset has no masks. Give its subsets a conditioning_data_dir (a folder of "
                         "mask images with the images' file names; Load Dataset's conditioning_data_dir) or turn "
                         "alpha_mask on for transparent images")
    data, held_out = validation.split(data, cfg.validation_split, validation.validation_seed(cfg))
    family = ca.detect_family(model)
    if network.family and network.family != family.name:
        raise ValueError(f"the LoRA network was built for {network.family} but the MODEL is {family.name}; "
                         "connect the same MODEL to Inject LoRA and Train LoRA")
    net = network.copy()                       # the cached input network keeps its weights
    mp = ca.install_network(model, net)
    train_te = bool(net.text_encoder_names)
    clip_t = ca.install_text_encoder_network(clip, net)
    if train_te and clip_t is None:
        raise ValueError("the network trains the text encoder: connect the CLIP from Inject LoRA to Train LoRA")
    spec = ca.objective_spec(mp)
    objective = build_objective(spec, cfg, family)
    guidance = cfg.guidance_scale if family.takes_guidance(ca.unet_config(model)) else None
    plan, budget, plans = _memory_plan(mp, net, data, cfg, progress, keep=[clip_t.patcher] if train_te else [],
                                       clip=clip_t if clip_t is not None else clip)
    # without a plan: auto checkpoints (the safe choice), the explicit modes run as named
    checkpointing = plan.checkpointing if plan is not None else cfg.memory_mode != "resident"
    stream = cfg.memory_mode == "streamed" or (plan is not None and plan.mode == "streamed")
    required = 0
    if plan is not None:
        required = plan.memory_required
        if plan.mode == "streamed":  # ComfyUI keeps only the plan's weights resident: the headroom stays free
            required = max(required, budget - plan.estimate.weights)
    elif cfg.blocks_to_swap:
        log.warning("LoRA Loop: blocks_to_swap=%d needs a memory plan, which could not be made: ComfyUI's loader "
                    "decides how much stays on the device", cfg.blocks_to_swap)

    def load() -> None:
        ca.load_for_training(mp, required, stream=stream)
    eta = Eta(cfg.max_train_steps,
              preview_images=len(preview.prompt_list()) if preview is not None else 0,
              preview_steps=preview.steps if preview is not None else 0,
              preview_every=preview.every_n_steps if preview is not None else 0,
              preview_cfg=preview.cfg if preview is not None else 1.0,
              save_every=checkpoints.cfg.save_every_n_steps if checkpoints is not None else 0)
    trainer: Trainer | None = None
    preview_clock = {"t": 0.0}

    def on_image_step(i: int, n: int, done: int, total: int) -> None:
        now = time.perf_counter()
        if done > 0 or i > 0:  # a sampler step, or the previous image's decode: both are preview time
            eta.add_sampler_steps(now - preview_clock["t"], 1)
        preview_clock["t"] = now
        step = trainer.step if trainer is not None else 0
        progress.phase(f"sampling preview {i + 1}/{n}, step {done}/{total}",
                       eta.remaining(step, preview_left=(n - i, total - done)))

    main = distributed.current().main  # several processes: only the first samples previews and writes files
    runner = (_preview_runner(preview, mp, clip_t if clip_t is not None else clip, vae, train_te, on_image_step, load)
              if main else None)
    summary = DatasetSummary.of(data.dataset, data.plan)
    if held_out is not None:
        summary = dataclasses.replace(summary, num_validation_images=len(held_out.dataset.images))
    started = float((resume.extra or {}).get("started_at") or time.time()) if resume is not None else time.time()

    with torch.inference_mode(False), torch.enable_grad():
        load()
        if train_te:
            ca.load_clip_for_training(clip_t)
        for p in net.parameters():
            p.requires_grad_(True)
        tmodel = ca.ComfyTrainModel(mp, cfg.mixed_precision, guidance=guidance)
        trainer = Trainer(model=tmodel, network=net, data=data, cfg=cfg, objective=objective,
                          text_encoder=_text_encoder(clip_t if clip_t is not None else clip, data.max_token_length),
                          size_conditioning=family.name == "sdxl")
        if resume is not None:
            apply_state(trainer, net, resume, resume_source)
            log.info("LoRA Loop: continuing from step %d (%s) to %d", trainer.step, resume_source,
                     cfg.max_train_steps)
        if held_out is not None:
            trainer.validator = validation.Validator(held_out, cfg)
            log.info("LoRA Loop: validation on %d held-out images (%d batches x %d timesteps %s)",
                     len(held_out.dataset.images), len(trainer.validator.batches),
                     len(trainer.validator.timesteps), trainer.validator.timesteps)
        start_step = trainer.step
        if start_step:
            progress.start_at(start_step, trainer.losses, trainer.lrs)

        def record() -> TrainingRecord:
            return record_of(trainer, started_at=started, mixed_precision=tmodel.precision,
                             gradient_checkpointing=checkpointing, prediction=spec.prediction, dataset=summary,
                             unet_config=ca.unet_config(model), config_class_names=tuple(ca.model_config_names(model)),
                             model_name=model_name)

        def save(reason: str, periodic: bool = False) -> Saved | None:
            if checkpoints is None or trainer.step <= start_step or not main:
                return checkpoints.last if checkpoints is not None else None
            progress.phase(f"saving checkpoint (step {trainer.step})", None)
            t0 = time.perf_counter()
            try:
                saved = checkpoints.save(trainer, net, reason, record())
            except OSError as e:
                if not periodic:
                    raise
                # a full or read-only folder must not end the run: the steps go on, the next save tries again
                log.error("LoRA Loop: could not write the checkpoint of step %d: %s", trainer.step, e)
                progress.note(f"checkpoint of step {trainer.step} NOT written: {e}")
                return None
            eta.add_save(time.perf_counter() - t0)
            rel = checkpoints.relative(saved)
            progress.note(f"{reason}: {rel} ({human_size(saved.size)})" if saved.size else f"{reason}: {rel}")
            return saved

        def nothing_saved(saved: Saved | None) -> str:
            """What the user keeps when no checkpoint was written (the checkpoint's own note says it otherwise)."""
            if saved is not None:
                return ""
            return ("stopped before the first step of this run: nothing new to save" if trainer.step <= start_step
                    else f"step {trainer.step} was not saved (no checkpoint folder)")

        def keep_stopped_run(reason: str) -> Saved | None:
            """A run that stopped early (Cancel, out of memory): save its last completed step and hand on the
            state a re-queue continues from."""
            saved = save(reason)
            if on_state is not None and trainer.step > start_step:
                on_state(capture_state(trainer, net, {"cancelled": True, "started_at": started}))
            return saved

        clock = {"t": time.perf_counter()}

        def on_step(info: StepInfo) -> None:
            eta.add_step(time.perf_counter() - clock["t"])
            progress.on_step(info, eta.remaining(info.step))
            if trainer.validation_losses and trainer.validation_losses[-1][0] == info.step:
                log.info("LoRA Loop: step %d: validation loss %.6f", info.step, trainer.validation_losses[-1][1])
                progress.validation(*trainer.validation_losses[-1])
            if checkpoints is not None and checkpoints.due(info.step, info.epoch_end, info.epoch):
                save("checkpoint", periodic=True)
            if runner is not None and runner.due(info.step, info.total):
                run_previews(info.step)
            clock["t"] = time.perf_counter()

        sampling = {"preview": False}  # an out-of-memory while previews sample gets its own advice

        def run_previews(step: int) -> None:
            preview_clock["t"] = time.perf_counter()
            sampling["preview"] = True
            imgs = runner.run(step, net)
            sampling["preview"] = False
            progress.preview(step, imgs)

        result, oom = None, None
        try:
            root = ca.diffusion_root(mp)
            te_root = clip_t.cond_stage_model if train_te else torch.nn.Module()
            with ca.differentiable_kernels(), ca.recast_in_backward(root), ca.recast_in_backward(te_root), \
                    ca.functional_residuals(root), ca.functional_residuals(te_root), \
                    ca.gradient_checkpointing(root, checkpointing), ca.gradient_checkpointing(te_root, checkpointing):
                result = trainer.run(on_step=on_step, should_stop=progress.should_stop)
                if runner is not None and not result.stopped_early and runner.due(trainer.step, trainer.step):
                    run_previews(trainer.step)  # resumed with nothing left to train: still show the end
            outcome["status"] = "cancelled" if result.stopped_early else "done"
            if result.stopped_early:
                outcome["message"] = nothing_saved(save("saved on Cancel"))
        except TrainingDiverged as e:
            saved = save("saved the last good step before the loss diverged")
            where = (f" The last good checkpoint is {saved.lora_path} (state: {saved.state_prefix}.json; set "
                     "resume_from to it after lowering the learning rate)." if saved is not None
                     else " No checkpoint was written (it diverged at the first step of this run)."
                     if checkpoints is not None else "")
            outcome["message"] = "loss diverged" + (f"; {nothing_saved(saved)}" if saved is None else "")
            raise TrainingDiverged(e.step, e.loss, detail=where) from None
        except BaseException as e:
            if is_out_of_memory(e):  # handled below, once this frame no longer holds the failed step's tensors
                oom = (trainer.step + 1, (str(e).strip().splitlines() or [type(e).__name__])[0], sampling["preview"])
            else:
                if ca.is_interrupt(e):
                    outcome["status"] = "cancelled"
                    try:
                        outcome["message"] = nothing_saved(keep_stopped_run("saved on Cancel"))
                    except Exception:
                        log.exception("LoRA Loop: could not save the state at Cancel")
                        outcome["message"] = "could not save a checkpoint at Cancel (see the console)"
                raise
        finally:
            for p in net.parameters():
                p.requires_grad_(False)
                p.grad = None
            net.eval()
        if oom is not None:
            step, device_text, in_preview = oom
            ca.free_device_memory()
            try:
                saved = keep_stopped_run("saved at out of memory")
                note = (f"Step {trainer.step} is saved: {saved.lora_path}." if saved is not None
                        else nothing_saved(saved) + ".")
            except Exception:
                log.exception("LoRA Loop: could not save the state after running out of memory")
                note = "The last completed step could not be saved (see the console)."
            outcome["message"] = "out of memory"
            if in_preview:
                raise TrainingOutOfMemory(_preview_out_of_memory_message(device_text, trainer.step, preview, note))
            raise TrainingOutOfMemory(_out_of_memory_message(device_text, step, plan, plans, budget, note))
        state = capture_state(trainer, net, {"cancelled": bool(result.stopped_early), "started_at": started})
    if on_state is not None and (trainer.step > start_step or resume is not None):
        on_state(state)
    if result.stopped_early:
        ca.raise_if_interrupted()
    rec = record()
    net.record = rec
    model_out, clip_out, form = ca.for_sampling(mp, clip_t if clip_t is not None else clip, net)
    progress.note(form.describe())
    return SessionResult(model=model_out, clip=clip_out, network=net,
                         losses=result.losses, lrs=result.lrs, record=rec, loop=result, state=state,
                         start_step=start_step, images=runner.batch() if runner is not None else None,
                         checkpoints=list(checkpoints.saved) if checkpoints is not None else [])

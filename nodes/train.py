"""Train LoRA node: parse inputs -> trainer.session.train -> outputs.

Train LoRA keeps what most runs change; the rest comes from settings nodes (``nodes/settings.py``) through
typed sockets. Re-queue continuation: a module-level registry keeps, per node (unique_id), the TrainState of
its last run together with a fingerprint of everything that shapes the trained weights except ``steps``
(identity of the upstream objects, which ComfyUI's cache keeps identical while upstream is unchanged, plus
the option values). When the node runs again with the same fingerprint and ``steps`` >= the stored step,
training continues from that state; otherwise it starts over. Preview, checkpoint and validation cadence are not
part of the fingerprint, nor is the memory mode: changing them continues the run (with nothing left to train, only the
previews re-run). The validation split is: it changes what is trained on."""
from __future__ import annotations

import logging

from ..trainer.checkpoints import CheckpointConfig
from ..trainer.config import TrainConfig
from ..trainer.continuation import ContinuationRegistry
from ..trainer.previews import PreviewConfig
from . import legacy
from ._api import CATEGORY, LoraDataset, LoraNetwork, TrainState, io
from .graph import upstream_model_file
from .progress import NodeProgress
from .schema import values_of, widget
from .settings import BY_NAME, receiver_input

log = logging.getLogger(__name__)

MAIN_FIELDS = ("max_train_steps", "learning_rate", "optimizer_type", "lr_scheduler", "seed", "memory_mode",
               "blocks_to_swap")
TOPICS = [BY_NAME[t] for t in ("optimizer", "noise_loss", "checkpoints", "previews")]  # its settings sockets
NETWORK_TRAINING = BY_NAME["network_training"]  # a later socket: the last input, after the widgets
VALIDATION = BY_NAME["validation"]  # a later socket too: after Network Training
TITLE = "Train LoRA (LoRA Loop)"
REGISTRY = ContinuationRegistry()


def clear_registry() -> None:
    """Forget every stored re-queue state (frees their memory)."""
    REGISTRY.clear()


def _settings(value, topic: str, name: str):
    if value is None:
        return None
    if getattr(value, "topic", None) != topic:
        raise TypeError(f"{TITLE}: '{name}' needs the output of the matching settings node, got {value!r}")
    return value


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_TrainLoRA",
            display_name=TITLE,
            category=f"{CATEGORY}/training",
            description="Train the injected LoRA on the encoded dataset and output the model with the trained "
                        "LoRA applied, ready for KSampler. Optional settings nodes (Optimizer, Noise & Loss, "
                        "Checkpoints & Resume, Previews, Network Training, Validation) plug into its settings inputs.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from Inject LoRA (or any MODEL of the same checkpoint). "
                                                "It is never modified: training runs on a clone."),
                LoraNetwork.Input("network", tooltip="The LORA_NETWORK from Inject LoRA: targets, rank, alpha and "
                                                     "initial weights. Not modified: training works on a copy."),
                LoraDataset.Input("dataset", tooltip="The dataset from Encode Dataset (latents + captions)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="CLIP from Inject LoRA. Required when the text encoder is trained, for "
                                      "previews, and when Encode Dataset had no CLIP or captions change per epoch "
                                      "(shuffle, dropout)."),
            ] + [receiver_input(t) for t in TOPICS] + [
                widget(TrainConfig, "max_train_steps"),
                widget(TrainConfig, "learning_rate"),
                widget(TrainConfig, "optimizer_type"),
                widget(TrainConfig, "lr_scheduler"),
                widget(TrainConfig, "seed", control_after_generate=True),
                widget(CheckpointConfig, "output_name", optional=True),
                widget(TrainConfig, "memory_mode", optional=True),
                widget(TrainConfig, "blocks_to_swap", optional=True),
                receiver_input(NETWORK_TRAINING),  # last: saved workflows keep their widget and socket order
                receiver_input(VALIDATION),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input MODEL with the trained LoRA applied: "
                                                              "merged into the weights as LoraLoader does (samples "
                                                              "at the base model's speed); on fp8 / quantized / GGUF "
                                                              "weights as the training bypass. Connect to KSampler."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the trained text-encoder LoRA applied "
                                                            "the same way (the input CLIP when the text encoder was "
                                                            "not trained)."),
                LoraNetwork.Output(display_name="network", tooltip="The trained LORA_NETWORK: connect to Save LoRA."),
                io.LossMap.Output(display_name="loss", tooltip="Loss per step ({'loss': [...]}, core's LOSS_MAP; "
                                                               "connects to Plot Loss Graph)."),
                io.Image.Output(display_name="previews",
                                tooltip="All preview images of this run, in order of step then prompt (also shown "
                                        "live on the node). Without previews: one 64x64 black image."),
                TrainState.Output(display_name="train_state",
                                  tooltip="Full resumable state after the last step (LoRA, optimizer, LR schedule, "
                                          "step, data position, seed, config): connect to another Train LoRA's "
                                          "Checkpoints & Resume node to continue training."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, model, network, dataset, clip=None, **inputs) -> io.NodeOutput:
        import torch

        from ..trainer.checkpoints import CheckpointWriter, load_checkpoint_state
        from ..trainer.session import train
        from ..trainer.validation import split, validation_seed
        from .save import loras_folder

        uid = str(cls.hidden.unique_id) if cls.hidden.unique_id is not None else None
        given = {t.input_name: inputs.pop(t.input_name, None) for t in TOPICS}
        widgets = inputs
        legacy.check("LoraLoop_TrainLoRA", TITLE, uid, cls.hidden.prompt, cls.hidden.extra_pnginfo,
                     {k: v is not None for k, v in given.items()})
        opt, noise, ckpts, prev = (_settings(given[t.input_name], t.name, t.input_name) for t in TOPICS)
        net_training = _settings(inputs.pop(NETWORK_TRAINING.input_name, None), NETWORK_TRAINING.name,
                                 NETWORK_TRAINING.input_name)
        validation_settings = _settings(inputs.pop(VALIDATION.input_name, None), VALIDATION.name,
                                        VALIDATION.input_name)
        train_values = values_of(TrainConfig, MAIN_FIELDS, widgets)
        for s in (opt, noise, net_training, validation_settings):
            if s is not None:
                train_values.update(s.values)
        cfg = TrainConfig(**train_values)
        if getattr(dataset, "plan", None) is not None:  # max_train_epochs: steps follow from the dataset
            trained = split(dataset, cfg.validation_split, validation_seed(cfg))[0]  # without the held-out images
            cfg = cfg.with_epochs_resolved(trained.dataset, trained.plan)
        ckpt_values = dict(ckpts.values) if ckpts is not None else {}
        ckpt_values["output_name"] = (widgets.get("output_name") or "").strip() or CheckpointConfig().output_name
        ckpt = CheckpointConfig(**ckpt_values)
        preview = PreviewConfig(**prev.values) if prev is not None else None
        folder = loras_folder()
        # explicit resume: a TRAIN_STATE input, else a state file
        resume, source = None, ""
        train_state = ckpts.train_state if ckpts is not None else None
        if train_state is not None:
            resume, source = train_state, "the train_state input"
        elif ckpt.resume_from.strip():
            resume = load_checkpoint_state(ckpt.resume_from, folder)
            source = ckpt.resume_from.strip()
        # re-queue continuation: same node, same inputs except a grown 'steps'
        objects = {"model": model, "network": network, "dataset": dataset, "clip": clip, "train_state": train_state}
        values = {"config": _without_steps(cfg), "resume_from": ckpt.resume_from, "output_name": ckpt.output_name}
        previous = REGISTRY.lookup(uid, objects, values, cfg.max_train_steps)
        if previous is not None:
            resume, source = previous, f"this node's previous run (step {previous.step})"
            before = int(previous.extra.get("max_train_steps", previous.step))
            if previous.extra.get("cancelled"):
                log.info("Train LoRA: continuing the cancelled run from step %d to %d", previous.step,
                         cfg.max_train_steps)
            elif before != cfg.max_train_steps:
                log.info("Train LoRA: steps raised from %d to %d: continuing from step %d", before,
                         cfg.max_train_steps, previous.step)
            else:
                log.info("Train LoRA: nothing new to train (step %d of %d): only the previews and outputs are "
                         "made again", previous.step, cfg.max_train_steps)

        def keep(state) -> None:
            REGISTRY.remember(uid, objects, values, state)

        progress = NodeProgress(cls.hidden.unique_id, cfg.max_train_steps)
        writer = CheckpointWriter(folder, ckpt)
        result = train(model=model, clip=clip, network=network, data=dataset, cfg=cfg, progress=progress,
                       checkpoints=writer, resume=resume, resume_source=source or "the training state",
                       preview=preview, vae=prev.vae if prev is not None else None, on_state=keep,
                       model_name=upstream_model_file(cls.hidden.prompt, uid))
        images = result.images if result.images is not None else torch.zeros((1, 64, 64, 3))
        return io.NodeOutput(result.model, result.clip, result.network, {"loss": list(result.losses)}, images,
                             result.state, ui=progress.final_ui())


def _without_steps(cfg: TrainConfig):
    """The config without what does not change the trained weights: steps (continuation) and the memory mode."""
    import dataclasses

    # the validation cadence neither (the split, validation_split and validation_seed, does)
    return dataclasses.replace(cfg, max_train_steps=1, max_train_epochs=0, memory_mode="auto", blocks_to_swap=0,
                               validate_every_n_steps=0, validate_every_n_epochs=0, max_validation_steps=0)

"""Training the text encoder is part of the memory plan: its step is measured on a meta-device copy of the CLIP
ComfyUI loaded (``adapter.memory.meta_copy``: the same modules, no weights) and added to the diffusion model's.
The meta count must equal the same count on the real encoder, for CLIP-L (SD1.5), CLIP-L + CLIP-G (SDXL) and
CLIP-L + T5 (FLUX), with and without checkpointing; and Train LoRA's plan grows by it."""
from __future__ import annotations

import os

import pytest

import comfy_env
import graphs
from comfy_fixtures import comfy  # noqa: F401

CAPTION = "a photo of sks, a small checkerboard pattern on a wooden table"


def _network(mp, clip, family):
    from trainer import adapter as ca
    from trainer.assemble import build_network
    from trainer.config import NetworkConfig

    fam = ca.detect_family(mp)
    cfg = NetworkConfig(network_dim=4, network_alpha=4.0, train_text_encoder=True,
                        train_t5=family == "flux")
    return build_network(fam, ca.diffusion_root(mp), ca.unet_config(mp), clip.cond_stage_model, cfg)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_the_meta_count_of_a_text_encoder_step_equals_the_real_one(comfy, family):
    import tiny_models
    from trainer.adapter.memory import measure_text_encoder_step

    from trainer import adapter as ca

    mp, clip, _ = tiny_models.build(family, 0)
    ca.load_clip_for_training(clip)  # as Train LoRA loads a text encoder that trains: trainable weights
    net = _network(mp, clip, family)
    assert net.text_encoder_names
    tokens = clip.tokenize(CAPTION)
    got = {}
    for ck in (False, True):
        meta = measure_text_encoder_step(clip, net, tokens, checkpointing=ck)
        real = measure_text_encoder_step(clip, net, tokens, checkpointing=ck, on_meta=False)
        assert meta.activations > 0 and meta.peak >= meta.activations, meta
        assert 0.95 <= meta.activations / real.activations <= 1.05, (ck, meta, real)
        assert 0.95 <= meta.peak / real.peak <= 1.05, (ck, meta, real)
        got[ck] = meta
    assert got[True].activations < got[False].activations, got  # checkpointing the encoder's layers saves
    assert not any(p.requires_grad for p in clip.cond_stage_model.parameters())  # the real encoder is untouched
    assert all("forward" not in m.__dict__ for m in clip.cond_stage_model.modules())


def test_train_loras_plan_counts_the_text_encoder_when_it_trains(comfy):
    notes = {}
    for te in (False, True):
        ds = graphs.make_dataset(os.path.join(comfy["tmp"], "in", "te_plan"), n=2)
        p = graphs.tiny_train_graph(graphs.load_api("train_then_generate_sd15.api.json"), family="sd15", dataset=ds,
                                    steps=1, save_name=f"te_plan_{te}")
        p[graphs.one(p, "LoraLoop_InjectLoRA")]["inputs"].update(train_text_encoder=te)
        if te:
            p[graphs.one(p, "LoraLoop_EncodeDataset")]["inputs"].pop("clip")  # captions encoded while training
        graphs.train_options(p, memory="resident")
        ex, _ = comfy_env.run_prompt(p, f"te-plan-{te}", executor=comfy_env.new_executor())
        chart = ex.history_result["outputs"][graphs.one(p, "LoraLoop_TrainLoRA")]["lora_loop_chart"][0]
        notes[te] = [n for n in chart["notes"] if n.startswith("memory: ")]
        assert notes[te] and notes[te][0].startswith("memory: resident: ~"), chart["notes"]

    def activations(note: str) -> float:
        part = note.split("activations ")[1].split(",")[0]
        value, unit = part.split()
        return float(value) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]

    assert activations(notes[True][0]) > activations(notes[False][0]), notes

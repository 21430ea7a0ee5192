"""headless/kohya_cli.py: sd-scripts' LoRA-training arguments -> the API-format prompt of our nodes (no ComfyUI).

The module imports the pack's trainer relatively (ComfyUI loads the pack under an arbitrary name), so it is
imported here as a submodule of the pack root loaded as a package."""
import dataclasses
import importlib
import importlib.util
import math
import os
import random
import subprocess
import sys

import pytest
from pack_import import PACKAGE, pack_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
kc = pack_module("headless.kohya_cli")
cfg = pack_module("trainer.config")
captions_mod = pack_module("trainer.captions")
dataset_mod = pack_module("trainer.dataset")

README_COMMAND = ("--pretrained_model_name_or_path=model.safetensors --dataset_config=my_dataset.toml "
                  "--output_dir=./output --output_name=my_lora --network_module=networks.lora --network_dim=16 "
                  "--network_alpha=8 --learning_rate=1e-4 --max_train_epochs=10").split()
BASE = ["--pretrained_model_name_or_path=model.safetensors", "--dataset_config=ds.toml", "--output_dir=out"]


class Register:
    """Stands in for the runtime's register(kind, path): records the calls, returns '<kind>/<file name>'."""

    def __init__(self):
        self.calls = []

    def __call__(self, kind, path):
        self.calls.append((kind, path))
        return f"{kind}/{os.path.basename(path)}"


def run(argv, seed=0):
    parsed = kc.parse(list(argv), rng=random.Random(seed))
    reg = Register()
    return parsed, kc.graph(parsed, reg), reg


def by_type(g, class_type):
    found = [n for n in g.values() if n["class_type"] == class_type]
    assert len(found) == 1, (class_type, [n["class_type"] for n in g.values()])
    return found[0]["inputs"]


def refused(argv) -> str:
    with pytest.raises(kc.CliError) as e:
        kc.parse(list(argv), rng=random.Random(0))
    return str(e.value)


# ------------------------------------------------------------------------------------------ the README command
def test_readme_command_builds_the_graph():
    parsed, g, reg = run(README_COMMAND)
    assert g["train"]["class_type"] == "LoraLoop_TrainLoRA" and g["save"]["class_type"] == "LoraLoop_SaveLoRA"
    assert by_type(g, "CheckpointLoaderSimple") == {"ckpt_name": "checkpoints/model.safetensors"}
    assert reg.calls == [("checkpoints", "model.safetensors")]
    ds = by_type(g, "LoraLoop_LoadDataset")
    assert ds["path"] == os.path.abspath("my_dataset.toml")  # Load Dataset resolves relative paths elsewhere
    assert ds["caption_extension"] == ".caption"  # sd-scripts' default, not the node's .txt
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert (inject["network_dim"], inject["network_alpha"]) == (16, 8.0)
    assert inject["train_text_encoder"] is True and inject["train_unet"] is True  # sd-scripts trains both
    assert inject["init_lora"] == "none" and inject["init_seed"] == parsed.seed
    train = g["train"]["inputs"]
    assert train["learning_rate"] == 1e-4 and train["steps"] == 1600 and train["optimizer"] == "AdamW"
    assert train["lr_scheduler"] == "constant" and train["memory"] == "auto" and train["output_name"] == "my_lora"
    assert train["seed"] == parsed.seed and parsed.seed_random
    opt = by_type(g, "LoraLoop_OptimizerSettings")
    assert opt["max_train_epochs"] == 10 and opt["text_encoder_lr"] == 1e-4  # the TE rate falls back to --learning_rate
    assert opt["mixed_precision"] == "no"
    assert g["save"]["inputs"] == {"network": ["train", 2], "filename": "my_lora", "save_dtype": "fp32",
                                   "if_exists": "overwrite", "verify": False}
    assert parsed.output_dir == os.path.abspath("./output") and parsed.output_name == "my_lora"
    # the text encoder trains: Encode Dataset gets no CLIP (Train LoRA encodes each step)
    assert "clip" not in by_type(g, "LoraLoop_EncodeDataset")
    assert "LoraLoop_PreviewSettings" not in {n["class_type"] for n in g.values()}
    assert any(f"seed {parsed.seed}" in line for line in kc.info_lines(parsed))


def test_links_point_at_existing_nodes_and_outputs():
    _, g, _ = run(README_COMMAND + ["--sample_prompts", __file__, "--sample_every_n_steps", "10", "--clip_skip", "2"])
    outputs = {"CheckpointLoaderSimple": 3, "CLIPSetLastLayer": 1, "LoraLoop_InjectLoRA": 3, "LoraLoop_TrainLoRA": 6}
    for nid, n in g.items():
        for name, value in n["inputs"].items():
            if isinstance(value, list):
                assert value[0] in g, (nid, name, value)
                assert value[1] < outputs.get(g[value[0]]["class_type"], 1), (nid, name, value)
    assert g["train"]["inputs"]["network"] == ["inject", 2] and g["save"]["inputs"]["network"] == ["train", 2]


# ------------------------------------------------------------------------------------------ sd-scripts' defaults
# Read from kohya-ss/sd-scripts: library/train_util.py (add_dataset_arguments, add_training_arguments,
# add_optimizer_arguments), train_network.py (setup_parser), library/flux_train_utils.py
# (add_flux_train_arguments), library/custom_train_functions.py (add_custom_train_arguments).
SD_SCRIPTS_DEFAULTS = [
    ("max_train_steps", 1600),          # train_util.add_training_arguments
    ("max_train_epochs", None),
    ("learning_rate", 2e-6),            # train_util.add_optimizer_arguments
    ("optimizer_type", ""),
    ("lr_scheduler", "constant"),
    ("lr_warmup_steps", 0),
    ("max_grad_norm", 1.0),
    ("mixed_precision", "no"),          # train_util.add_training_arguments
    ("train_batch_size", 1),
    ("seed", None),
    ("save_precision", None),
    ("caption_extension", ".caption"),  # train_util.add_dataset_arguments
    ("enable_bucket", False),
    ("min_bucket_reso", 256),
    ("max_bucket_reso", 1024),
    ("bucket_reso_steps", 64),
    ("vae_batch_size", 1),
    ("network_dim", None),              # train_network.setup_parser (networks/lora.py then uses 4)
    ("network_alpha", 1),
    ("save_model_as", "safetensors"),
    ("guidance_scale", 3.5),            # flux_train_utils.add_flux_train_arguments
    ("timestep_sampling", "sigma"),
    ("discrete_flow_shift", 3.0),
    ("model_prediction_type", "sigma_scaled"),
    ("loss_type", "l2"),
    ("min_snr_gamma", None),            # custom_train_functions.add_custom_train_arguments
    ("sample_sampler", "ddim"),
]


@pytest.mark.parametrize("name,default", SD_SCRIPTS_DEFAULTS)
def test_parser_defaults_are_sd_scripts(name, default):
    ns = kc.build_parser().parse_args([])
    assert getattr(ns, name) == default and type(getattr(ns, name)) is type(default)


def test_defaults_reach_the_nodes():
    parsed, g, _ = run(BASE + ["--seed", "3"])
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert (inject["network_dim"], inject["network_alpha"], inject["conv_dim"]) == (4, 1.0, 0)
    buckets = by_type(g, "LoraLoop_BucketImages")
    assert buckets["enable_bucket"] is False and buckets["batch_size"] == 1 and buckets["resolution"] == 512
    assert g["train"]["inputs"]["learning_rate"] == 2e-6 and g["train"]["inputs"]["output_name"] == "last"
    assert g["save"]["inputs"]["filename"] == "last"
    noise = by_type(g, "LoraLoop_NoiseLossSettings")
    assert noise["timestep_sampling"] == "model" and noise["guidance_scale"] == 3.5
    assert noise["noise_offset"] == 0.0 and noise["min_timestep"] == 0 and noise["max_timestep"] == 1000
    assert not parsed.seed_random and parsed.seed == 3


def test_parser_arguments_are_the_table():
    p = kc.build_parser()
    dests = {a.dest for a in p._actions if a.option_strings and a.dest != "help"}
    assert dests == set(kc.BY_NAME) and len(kc.OPTIONS) == len(kc.BY_NAME)
    assert len(kc.OPTIONS) > 200  # the union of the four scripts' arguments
    for row in kc.OPTION_TABLE:
        name, kind, target = row
        assert name.startswith("--") and kind in kc.KINDS and isinstance(target, str)
        if kind in (kc.MAPPED, kc.GRAPH, kc.AUTOMATIC):
            assert target, name


def test_int_or_float_steps():
    p = kc.build_parser()
    assert p.parse_args(["--lr_warmup_steps", "100"]).lr_warmup_steps == 100
    assert p.parse_args(["--lr_warmup_steps", "0.1"]).lr_warmup_steps == 0.1
    assert p.parse_args(["--lr_warmup_steps", "5%"]).lr_warmup_steps == 0.05
    with pytest.raises(kc.CliError, match="lr_warmup_steps"):
        p.parse_args(["--lr_warmup_steps", "many"])


# ------------------------------------------------------------------------------------------ --config_file
def test_config_file_precedence(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n'
                    '[dataset]\ndataset_config = "d.toml"\nresolution = 768\n'
                    '[training]\nlearning_rate = 1e-3\nnetwork_dim = 8\nmax_train_steps = 300\n'
                    'text_encoder_lr = 5e-5\nnetwork_args = ["conv_dim=4"]\ngradient_checkpointing = true\n'
                    'output_dir = "o"\n', encoding="utf-8")
    # the name without .toml works, as in sd-scripts; the command line wins over the file
    parsed, g, _ = run(["--config_file", str(tmp_path / "run"), "--network_dim", "32"])
    assert parsed.config_file == str(conf)
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert inject["network_dim"] == 32 and inject["conv_dim"] == 4
    train = g["train"]["inputs"]
    assert train["learning_rate"] == 1e-3 and train["steps"] == 300 and train["memory"] == "checkpointed"
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lr"] == 5e-5
    assert by_type(g, "LoraLoop_BucketImages")["resolution"] == 768
    assert by_type(g, "LoraLoop_BucketImages")["min_bucket_reso"] == 256  # neither: the default
    assert {"network_dim", "learning_rate", "pretrained_model_name_or_path"} <= parsed.given


def test_config_file_unknown_keys_missing_file_and_bad_values(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[x]\nlearning_rate = 1e-4\nnot_an_option = 1\n', encoding="utf-8")
    msg = refused(BASE + ["--config_file", str(conf), "--bogus"])
    assert "unknown arguments" in msg and "--bogus" in msg and "not_an_option" in msg and msg.count("\n") == 0
    assert "not found" in refused(BASE + ["--config_file", str(tmp_path / "nope")])
    conf.write_text('network_dim = "many"\n', encoding="utf-8")
    assert "network_dim" in refused(BASE + ["--config_file", str(conf)])


# ------------------------------------------------------------------------------------------ refusals
def test_unknown_arguments_one_message():
    msg = refused(BASE + ["--foo", "1", "--bar=2", "stray", "--baz"])
    assert msg.startswith("unknown arguments")
    for name in ("--foo", "--bar", "'stray'", "--baz"):
        assert name in msg
    assert "'1'" not in msg  # the value of an unknown option is not a second unknown


def test_unsupported_arguments_one_message():
    msg = refused(BASE + ["--huber_c", "0.2",
                          "--multires_noise_iterations", "6", "--ip_noise_gamma", "0.1", "--masked_loss",
                          "--color_aug", "--random_crop", "--debiased_estimation_loss",
                          "--zero_terminal_snr", "--lr_decay_steps", "10", "--max_token_length", "225",
                          "--loss_type", "huber", "--fused_backward_pass", "--network_module", "networks.oft",
                          "--network_args", "ggpo_beta=0.01", "split_qkv=True", "--resolution", "512,768"])
    assert msg.startswith("not supported yet: ") and "\n" not in msg
    for name in ("--lr_decay_steps", "--fused_backward_pass",
                 "--network_module=networks.oft", "ggpo_beta=0.01", "split_qkv=True", "--resolution=512,768"):
        assert name in msg, name
    # the loss and noise options are implemented (mapped)
    for name in ("--huber_c", "--multires_noise_iterations", "--ip_noise_gamma", "--debiased_estimation_loss",
                 "--zero_terminal_snr", "--loss_type", "--masked_loss", "--max_token_length", "--color_aug",
                 "--random_crop"):
        assert name not in msg, name


def test_unsupported_at_their_default_values_pass():
    # an unsupported argument given with sd-scripts' default changes nothing
    run(BASE + ["--lr_decay_steps", "0", "--weighting_scheme", "uniform",
                "--prior_loss_weight", "1.0", "--model_prediction_type", "raw"])


def test_unknown_and_unsupported_together():
    msg = refused(BASE + ["--nope", "--fused_backward_pass"])
    assert "unknown arguments" in msg and "--nope" in msg and "not supported yet" in msg and "fused_backward" in msg


def test_flow_sampling_choices():
    _, g, _ = run(BASE + ["--timestep_sampling", "flux_shift", "--sigmoid_scale", "1.5",
                          "--discrete_flow_shift", "3.1582"])
    noise = by_type(g, "LoraLoop_NoiseLossSettings")
    assert (noise["timestep_sampling"], noise["sigmoid_scale"], noise["discrete_flow_shift"]) == \
        ("flux_shift", 1.5, 3.1582)
    assert "--timestep_sampling=sigma" in refused(BASE + ["--timestep_sampling", "sigma"])
    assert "--model_prediction_type=sigma_scaled" in refused(BASE + ["--model_prediction_type", "sigma_scaled"])


def test_invalid_values_are_reported_with_the_argument():
    msg = refused(BASE + ["--network_dim", "0", "--max_grad_norm", "-1"])
    assert msg.startswith("invalid arguments") and "--network_dim" in msg and "--max_grad_norm" in msg
    assert "constant" in refused(BASE + ["--lr_warmup_steps", "10"])  # sd-scripts refuses a constant warm-up too
    assert "needs noise_offset" in refused(BASE + ["--adaptive_noise_scale", "0.01"])  # sd-scripts' rule too
    assert "--output_dir is required" in refused(BASE[:2])
    assert "--resolution is required" in refused(["--pretrained_model_name_or_path=m.safetensors",
                                                  "--train_data_dir=d", "--output_dir=o"])
    assert "--dataset_config" in refused(["--pretrained_model_name_or_path=m.safetensors", "--output_dir=o"])
    assert "--use_8bit_adam" in refused(BASE + ["--use_8bit_adam", "--optimizer_type", "AdamW"])
    with pytest.raises(kc.CliError, match="mixed_precision"):  # argparse's own errors are CliErrors too
        kc.parse(BASE + ["--mixed_precision", "fp64"])


# ------------------------------------------------------------------------------------------ automatic
def test_automatic_arguments_are_listed():
    parsed, _, _ = run(BASE + ["--xformers", "--cache_latents", "--persistent_data_loader_workers",
                               "--max_data_loader_n_workers", "2", "--log_with", "tensorboard", "--logging_dir", "logs",
                               "--v2", "--save_state", "--save_model_as", "safetensors", "--train_data_dir", "x"])
    names = kc.ignored(parsed)
    for name in ("--xformers", "--cache_latents", "--persistent_data_loader_workers", "--max_data_loader_n_workers",
                 "--log_with", "--logging_dir", "--v2", "--save_state", "--train_data_dir"):
        assert name in names, name
    assert "--save_model_as" not in names  # the default value
    assert any(line.startswith("ignored") and "--xformers" in line for line in kc.info_lines(parsed))
    assert kc.ignored(run(BASE)[0]) == []


# ------------------------------------------------------------------------------------------ model loading
FLUX = ["--pretrained_model_name_or_path=flux1-dev.safetensors", "--clip_l=clip_l.safetensors",
        "--t5xxl=t5xxl_fp16.safetensors", "--ae=ae.safetensors", "--dataset_config=ds.toml", "--output_dir=o"]


def test_flux_loaders():
    parsed, g, reg = run(FLUX + ["--fp8_base", "--network_module=networks.lora_flux"])
    assert by_type(g, "UNETLoader") == {"unet_name": "diffusion_models/flux1-dev.safetensors",
                                        "weight_dtype": "fp8_e4m3fn"}
    assert by_type(g, "DualCLIPLoader") == {"clip_name1": "text_encoders/clip_l.safetensors",
                                            "clip_name2": "text_encoders/t5xxl_fp16.safetensors", "type": "flux"}
    assert by_type(g, "VAELoader") == {"vae_name": "vae/ae.safetensors"}
    assert "CheckpointLoaderSimple" not in {n["class_type"] for n in g.values()}
    assert by_type(g, "LoraLoop_InjectLoRA")["model"] == ["model", 0]
    assert by_type(g, "LoraLoop_InjectLoRA")["clip"] == ["clip", 0]
    assert by_type(g, "LoraLoop_EncodeDataset")["vae"] == ["vae", 0]
    assert sorted(k for k, _ in reg.calls) == ["diffusion_models", "text_encoders", "text_encoders", "vae"]
    _, g, _ = run(FLUX)
    assert by_type(g, "UNETLoader")["weight_dtype"] == "default"


def test_flux_needs_its_vae_and_both_text_encoders():
    assert "--ae" in refused([a for a in FLUX if not a.startswith("--ae")])
    assert "--clip_l" in refused([a for a in FLUX if not a.startswith("--t5xxl")])


def test_sd3_chroma_gguf_and_vae_loaders():
    sd3 = ["--pretrained_model_name_or_path=sd3.5_large.safetensors", "--clip_l=l.safetensors",
           "--clip_g=g.safetensors", "--t5xxl=t5.safetensors", "--dataset_config=d.toml", "--output_dir=o"]
    _, g, _ = run(sd3)
    assert by_type(g, "TripleCLIPLoader") == {"clip_name1": "text_encoders/l.safetensors",
                                              "clip_name2": "text_encoders/g.safetensors",
                                              "clip_name3": "text_encoders/t5.safetensors"}
    assert by_type(g, "LoraLoop_InjectLoRA")["model"] == ["checkpoint", 0]  # MMDiT and VAE from the checkpoint
    assert by_type(g, "LoraLoop_InjectLoRA")["clip"] == ["clip", 0]
    assert "--clip_g" in refused(sd3[:1] + sd3[2:])  # a partial SD3 set
    _, g, _ = run(["--pretrained_model_name_or_path=chroma.safetensors", "--model_type=chroma",
                   "--t5xxl=t5.safetensors", "--ae=ae.safetensors", "--dataset_config=d.toml", "--output_dir=o"])
    assert by_type(g, "CLIPLoader") == {"clip_name": "text_encoders/t5.safetensors", "type": "chroma"}
    assert by_type(g, "LoraLoop_InjectLoRA")["train_text_encoder"] is False
    _, g, reg = run(["--pretrained_model_name_or_path=flux-Q4.gguf", "--clip_l=clip_l.safetensors",
                     "--t5xxl=t5-Q8.gguf", "--ae=ae.safetensors", "--dataset_config=d.toml", "--output_dir=o"])
    assert by_type(g, "UnetLoaderGGUF") == {"unet_name": "unet_gguf/flux-Q4.gguf"}
    assert by_type(g, "DualCLIPLoaderGGUF")["clip_name2"] == "clip_gguf/t5-Q8.gguf"
    assert ("text_encoders", "clip_l.safetensors") in reg.calls
    _, g, _ = run(BASE + ["--vae", "sdxl_vae.safetensors"])
    assert by_type(g, "VAELoader") == {"vae_name": "vae/sdxl_vae.safetensors"}
    assert by_type(g, "LoraLoop_EncodeDataset")["vae"] == ["vae", 0]
    assert by_type(g, "LoraLoop_InjectLoRA")["clip"] == ["checkpoint", 1]


def test_fp8_on_a_single_file_checkpoint():
    parsed, g, _ = run(BASE + ["--fp8_base"])
    assert by_type(g, "UNETLoader") == {"unet_name": "diffusion_models/model.safetensors", "weight_dtype": "fp8_e4m3fn"}
    assert by_type(g, "LoraLoop_InjectLoRA")["model"] == ["model", 0]
    assert by_type(g, "LoraLoop_InjectLoRA")["clip"] == ["checkpoint", 1]  # its text encoders and VAE
    assert by_type(g, "LoraLoop_EncodeDataset")["vae"] == ["checkpoint", 2]
    assert any("fp8" in n for n in parsed.notes)


def test_clip_skip_and_network_weights():
    _, g, reg = run(BASE + ["--clip_skip", "2", "--network_weights", "/x/start.safetensors"])
    assert by_type(g, "CLIPSetLastLayer") == {"clip": ["checkpoint", 1], "stop_at_clip_layer": -2}
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert inject["clip"] == ["clip_skip", 0] and inject["init_lora"] == "loras/start.safetensors"
    assert ("loras", "/x/start.safetensors") in reg.calls
    _, g, _ = run(BASE + ["--clip_skip", "1"])
    assert "CLIPSetLastLayer" not in {n["class_type"] for n in g.values()}


def test_v_parameterization():
    parsed, g, _ = run(BASE + ["--v2", "--v_parameterization"])
    assert by_type(g, "ModelSamplingDiscrete") == {"model": ["checkpoint", 0], "sampling": "v_prediction",
                                                   "zsnr": False}
    assert by_type(g, "LoraLoop_InjectLoRA")["model"] == ["v_prediction", 0]
    assert kc.ignored(parsed) == ["--v2"]
    parsed, g, _ = run(FLUX + ["--v_parameterization"])  # a flow model: nothing to switch
    assert "ModelSamplingDiscrete" not in {n["class_type"] for n in g.values()}
    assert "--v_parameterization" in kc.ignored(parsed)


def test_dataset_folder_options_are_ignored_with_a_dataset_config():
    parsed, g, _ = run(BASE + ["--train_data_dir", "x", "--reg_data_dir", "r", "--in_json", "m.json"])
    assert by_type(g, "LoraLoop_LoadDataset")["path"] == os.path.abspath("ds.toml")
    assert {"--train_data_dir", "--reg_data_dir", "--in_json"} <= set(kc.ignored(parsed))
    folder = ["--pretrained_model_name_or_path=m.safetensors", "--train_data_dir=d", "--resolution=512",
              "--output_dir=o"]
    assert by_type(run(folder)[1], "LoraLoop_LoadDataset")["path"] == os.path.abspath("d")
    assert "--reg_data_dir=r" in refused(folder + ["--reg_data_dir", "r"])


# ------------------------------------------------------------------------------------------ network
def test_network_args():
    _, g, _ = run(BASE + ["--network_module", "networks.lora_flux", "--network_args", "conv_dim=8", "conv_alpha=2",
                          "train_blocks=single", "train_t5xxl=True", "verbose=True"])
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert (inject["conv_dim"], inject["conv_alpha"], inject["train_blocks"], inject["train_t5"]) == \
        (8, 2.0, "single", True)
    assert "clip" not in by_type(g, "LoraLoop_EncodeDataset")
    _, g, _ = run(BASE + ["--network_args", "conv_dim=4"])
    assert by_type(g, "LoraLoop_InjectLoRA")["conv_alpha"] == 1.0  # sd-scripts' conv_alpha default
    # sd-scripts applies no text-encoder LoRA (T5-XXL's neither) with --network_train_unet_only
    _, g, _ = run(BASE + ["--network_args", "train_t5xxl=True", "--network_train_unet_only"])
    inject = by_type(g, "LoraLoop_InjectLoRA")
    assert inject["train_t5"] is False and inject["train_text_encoder"] is False
    assert by_type(g, "LoraLoop_EncodeDataset")["clip"] == ["checkpoint", 1]
    assert "key=value" in refused(BASE + ["--network_args", "conv_dim"])
    assert "ggpo_beta=0.1" in refused(BASE + ["--network_args", "ggpo_beta=0.1"])
    for module in ("networks.lora", "networks.lora_flux", "networks.lora_sd3", "networks.lora_lumina"):
        run(BASE + ["--network_module", module])
    for module in ("networks.dylora", "networks.oft", "networks.lora_fa"):
        assert f"--network_module={module}" in refused(BASE + ["--network_module", module])


def test_lycoris_network_args():
    """lycoris.kohya: algo (locon is LoRA with convs), dora_wd, factor and decompose_both go to Network Options;
    the convs train at network_dim/alpha unless conv_dim says otherwise (LyCORIS' defaults); options at LyCORIS'
    default values pass; the others, and dropouts LyCORIS defines for LoRA only, are refused by name."""
    lyco = BASE + ["--network_module", "lycoris.kohya", "--network_dim", "8", "--network_alpha", "4"]
    parsed, g, _ = run(lyco + ["--network_args", "algo=lokr", "factor=8", "decompose_both=True", "preset=full",
                               "use_tucker=False", "bypass_mode=True", "rank_dropout_scale=False"])
    options, inject = by_type(g, "LoraLoop_NetworkOptions"), by_type(g, "LoraLoop_InjectLoRA")
    assert (options["algo"], options["factor"], options["decompose_both"], options["dora_wd"]) == \
        ("lokr", 8, True, False)
    assert (inject["conv_dim"], inject["conv_alpha"]) == (8, 4.0)
    assert [n for n in parsed.notes if "preset=full" in n and "networks.lora's modules" in n]
    _, g, _ = run(lyco + ["--network_args", "algo=locon", "dora_wd=True", "conv_dim=2", "conv_alpha=1"])
    options, inject = by_type(g, "LoraLoop_NetworkOptions"), by_type(g, "LoraLoop_InjectLoRA")
    assert (options["algo"], options["dora_wd"], inject["conv_dim"], inject["conv_alpha"]) == ("lora", True, 2, 1.0)
    _, g, _ = run(lyco + ["--network_args", "algo=loha"])
    assert by_type(g, "LoraLoop_NetworkOptions")["algo"] == "loha"
    _, g, _ = run(BASE + ["--network_args", "conv_dim=4"])  # networks.lora: no LyCORIS keys, kohya LoRA
    assert by_type(g, "LoraLoop_NetworkOptions")["algo"] == "lora"
    assert "algo=ia3" in refused(lyco + ["--network_args", "algo=ia3"])
    assert "use_tucker=True" in refused(lyco + ["--network_args", "algo=loha", "use_tucker=True"])
    assert "wd_on_output" in refused(lyco + ["--network_args", "dora_wd=True", "wd_on_output=True"])
    assert "LoRA only" in refused(lyco + ["--network_args", "algo=loha", "rank_dropout=0.1"])
    assert "algo=loha" in refused(BASE + ["--network_args", "algo=loha"])  # networks.lora has no algo


def test_train_only_text_encoder():
    _, g, _ = run(BASE + ["--network_train_text_encoder_only"])
    assert by_type(g, "LoraLoop_InjectLoRA")["train_unet"] is False


# ------------------------------------------------------------------------------------------ learning rates, optimizer
def test_learning_rates():
    _, g, _ = run(BASE + ["--learning_rate", "1e-4", "--unet_lr", "3e-4", "--text_encoder_lr", "2e-5"])
    assert g["train"]["inputs"]["learning_rate"] == 3e-4
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lr"] == 2e-5
    parsed, g, _ = run(BASE + ["--text_encoder_lr", "1e-5", "2e-5"])  # networks.lora uses the first one
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lr"] == 1e-5
    assert any("first value" in n for n in parsed.notes)
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lrs"] == ""
    # the family modules with prepare_optimizer_params_with_multiple_te_lrs: one rate per encoder
    _, g, _ = run(BASE + ["--network_module", "networks.lora_flux", "--text_encoder_lr", "1e-5", "2e-5"])
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lrs"] == "1e-05,2e-05"
    _, g, _ = run(BASE + ["--network_module", "networks.lora_sd3", "--text_encoder_lr", "1e-5", "1e-5"])
    assert by_type(g, "LoraLoop_OptimizerSettings")["text_encoder_lrs"] == ""  # one value


@pytest.mark.parametrize("argv,ours", [
    ([], "AdamW"), (["--use_8bit_adam"], "AdamW8bit"), (["--optimizer_type", "adamw8bit"], "AdamW8bit"),
    (["--optimizer_type", "SGDNesterov"], "SGDNesterov"), (["--optimizer_type", "torch.optim.SGD"], "SGD"),
    (["--optimizer_type", "Adam"], "Adam"), (["--optimizer_type", "bitsandbytes.optim.AdamW8bit"], "AdamW8bit"),
    (["--use_lion_optimizer"], "Lion"), (["--optimizer_type", "prodigy"], "Prodigy"),
    (["--optimizer_type", "DAdaptAdamPreprint"], "DAdaptation"), (["--optimizer_type", "PagedLion8bit"], "PagedLion8bit"),
    (["--optimizer_type", "AdamWScheduleFree"], "AdamWScheduleFree"),
    (["--optimizer_type", "Adafactor", "--lr_scheduler", "adafactor"], "Adafactor"),
])
def test_optimizers(argv, ours):
    optim = importlib.import_module(f"{PACKAGE}.trainer.optim")
    _, g, _ = run(BASE + argv)
    assert g["train"]["inputs"]["optimizer"] == ours and ours in optim.available_optimizers()
    assert by_type(g, "LoraLoop_OptimizerSettings")["optimizer_class"] == ""


def test_every_sd_scripts_optimizer_name_is_ours():
    optim = importlib.import_module(f"{PACKAGE}.trainer.optim")
    assert set(kc._OPTIMIZERS_LOWER.values()) <= set(optim.available_optimizers())
    assert {n.lower() for n in optim.available_optimizers() if n not in ("Adam", "SGD")} <= set(kc._OPTIMIZERS_LOWER)


@pytest.mark.parametrize("name", ["pytorch_optimizer.CAME", "torch.optim.RAdam", "RAdam"])
def test_optimizer_classes_go_to_optimizer_class(name):
    _, g, _ = run(BASE + ["--optimizer_type", name, "--optimizer_args", "weight_decay=0.01"])
    opt = by_type(g, "LoraLoop_OptimizerSettings")
    assert (g["train"]["inputs"]["optimizer"], opt["optimizer_class"], opt["optimizer_args"]) == \
        ("AdamW", name, "weight_decay=0.01")


def test_unknown_optimizers_are_unsupported():
    assert "--optimizer_type=sgd" in refused(BASE + ["--optimizer_type", "sgd"])  # torch.optim has no 'sgd'
    assert "--use_lion_optimizer" in refused(BASE + ["--use_lion_optimizer", "--optimizer_type", "AdamW"])
    assert "--use_lion_optimizer" in refused(BASE + ["--use_lion_optimizer", "--use_8bit_adam"])


def test_lr_scheduler_type_and_args():
    _, g, _ = run(BASE + ["--lr_scheduler_type", "CosineAnnealingLR", "--lr_scheduler_args", "T_max=100",
                          "eta_min=1e-6"])
    opt = by_type(g, "LoraLoop_OptimizerSettings")
    assert (opt["lr_scheduler_type"], opt["lr_scheduler_args"]) == ("CosineAnnealingLR", "T_max=100 eta_min=1e-6")
    assert "no warm-up" in refused(BASE + ["--lr_scheduler_type", "StepLR", "--lr_scheduler", "cosine",
                                           "--lr_warmup_steps", "10"])


def test_warmup_ratio_and_optimizer_args():
    _, g, _ = run(BASE + ["--lr_scheduler", "cosine", "--lr_warmup_steps", "0.1", "--max_train_steps", "500",
                          "--optimizer_args", "weight_decay=0.1", "betas=(0.9, 0.99)"])
    opt = by_type(g, "LoraLoop_OptimizerSettings")  # a ratio stays a ratio (of the steps the run ends up with)
    assert opt["lr_warmup_steps"] == 0.1 and opt["optimizer_args"] == "weight_decay=0.1 betas=(0.9,0.99)"
    _, g, _ = run(BASE + ["--lr_scheduler", "linear", "--lr_warmup_steps", "10%", "--max_train_steps", "200"])
    assert by_type(g, "LoraLoop_OptimizerSettings")["lr_warmup_steps"] == 0.1
    _, g, _ = run(BASE + ["--lr_scheduler", "linear", "--lr_warmup_steps", "0.1", "--max_train_epochs", "4"])
    assert by_type(g, "LoraLoop_OptimizerSettings")["lr_warmup_steps"] == 0.1
    _, g, _ = run(BASE + ["--lr_scheduler", "linear", "--lr_warmup_steps", "100%", "--max_train_steps", "200"])
    assert by_type(g, "LoraLoop_OptimizerSettings")["lr_warmup_steps"] == 200  # ratio 1.0: steps here
    assert "--lr_warmup_steps" in refused(BASE + ["--lr_scheduler", "linear", "--lr_warmup_steps", "100%",
                                                  "--max_train_epochs", "4"])
    assert "--lr_scheduler=adafactor" in refused(BASE + ["--lr_scheduler", "adafactor"])


# ------------------------------------------------------------------------------------------ every mapped value
MAPPED_VALUES = [
    (["--shuffle_caption"], "LoraLoop_CaptionSettings", "shuffle_caption", True),
    (["--masked_loss"], "LoraLoop_NoiseLossSettings", "masked_loss", True),
    (["--alpha_mask"], "LoraLoop_LoadDataset", "alpha_mask", True),
    (["--max_token_length", "225"], "LoraLoop_EncodeDataset", "max_token_length", 225),
    (["--color_aug"], "LoraLoop_CaptionSettings", "color_aug", True),
    (["--random_crop"], "LoraLoop_CaptionSettings", "random_crop", True),
    (["--validation_split", "0.25"], "LoraLoop_ValidationSettings", "validation_split", 0.25),
    (["--validation_seed", "9"], "LoraLoop_ValidationSettings", "validation_seed", 9),
    (["--validate_every_n_steps", "10"], "LoraLoop_ValidationSettings", "validate_every_n_steps", 10),
    (["--validate_every_n_epochs", "3"], "LoraLoop_ValidationSettings", "validate_every_n_epochs", 3),
    (["--max_validation_steps", "5"], "LoraLoop_ValidationSettings", "max_validation_steps", 5),
    (["--enable_wildcard"], "LoraLoop_CaptionSettings", "enable_wildcard", True),
    (["--prior_loss_weight", "0.5"], "LoraLoop_NoiseLossSettings", "prior_loss_weight", 0.5),
    (["--token_warmup_min", "2"], "LoraLoop_CaptionSettings", "token_warmup_min", 2),
    (["--token_warmup_step", "0.5"], "LoraLoop_CaptionSettings", "token_warmup_step", 0.5),
    (["--keep_tokens", "2"], "LoraLoop_CaptionSettings", "keep_tokens", 2),
    (["--keep_tokens_separator", "|||"], "LoraLoop_CaptionSettings", "keep_tokens_separator", "|||"),
    (["--caption_separator", ";"], "LoraLoop_CaptionSettings", "caption_separator", ";"),
    (["--secondary_separator", ";;;"], "LoraLoop_CaptionSettings", "secondary_separator", ";;;"),
    (["--caption_prefix", "photo"], "LoraLoop_CaptionSettings", "caption_prefix", "photo"),
    (["--caption_suffix", "end"], "LoraLoop_CaptionSettings", "caption_suffix", "end"),
    (["--caption_dropout_rate", "0.1"], "LoraLoop_CaptionSettings", "caption_dropout_rate", 0.1),
    (["--caption_dropout_every_n_epochs", "3"], "LoraLoop_CaptionSettings", "caption_dropout_every_n_epochs", 3),
    (["--caption_tag_dropout_rate", "0.2"], "LoraLoop_CaptionSettings", "caption_tag_dropout_rate", 0.2),
    (["--flip_aug"], "LoraLoop_CaptionSettings", "flip_aug", True),
    (["--caption_extension", ".txt"], "LoraLoop_LoadDataset", "caption_extension", ".txt"),
    (["--caption_extention", "txt"], "LoraLoop_LoadDataset", "caption_extension", "txt"),
    (["--resolution", "1024"], "LoraLoop_BucketImages", "resolution", 1024),
    (["--resolution", "768,768"], "LoraLoop_BucketImages", "resolution", 768),
    (["--train_batch_size", "4"], "LoraLoop_BucketImages", "batch_size", 4),
    (["--enable_bucket"], "LoraLoop_BucketImages", "enable_bucket", True),
    (["--min_bucket_reso", "320"], "LoraLoop_BucketImages", "min_bucket_reso", 320),
    (["--max_bucket_reso", "2048"], "LoraLoop_BucketImages", "max_bucket_reso", 2048),
    (["--bucket_reso_steps", "32"], "LoraLoop_BucketImages", "bucket_reso_steps", 32),
    (["--bucket_no_upscale"], "LoraLoop_BucketImages", "bucket_no_upscale", True),
    (["--cache_latents_to_disk"], "LoraLoop_EncodeDataset", "cache_latents_to_disk", True),
    (["--vae_batch_size", "8"], "LoraLoop_EncodeDataset", "vae_batch_size", 8),
    (["--network_dim", "32"], "LoraLoop_InjectLoRA", "network_dim", 32),
    (["--network_alpha", "16"], "LoraLoop_InjectLoRA", "network_alpha", 16.0),
    (["--network_train_unet_only"], "LoraLoop_InjectLoRA", "train_text_encoder", False),
    (["--seed", "42"], "LoraLoop_InjectLoRA", "init_seed", 42),
    (["--seed", "42"], "LoraLoop_TrainLoRA", "seed", 42),
    (["--max_train_steps", "99"], "LoraLoop_TrainLoRA", "steps", 99),
    (["--learning_rate", "5e-4"], "LoraLoop_TrainLoRA", "learning_rate", 5e-4),
    (["--lr_scheduler", "cosine_with_restarts"], "LoraLoop_TrainLoRA", "lr_scheduler", "cosine_with_restarts"),
    (["--output_name", "x"], "LoraLoop_TrainLoRA", "output_name", "x"),
    (["--gradient_checkpointing"], "LoraLoop_TrainLoRA", "memory", "checkpointed"),
    (["--gradient_checkpointing", "--blocks_to_swap", "10"], "LoraLoop_TrainLoRA", "memory", "streamed"),
    (["--blocks_to_swap", "10"], "LoraLoop_TrainLoRA", "blocks_to_swap", 10),
    (["--max_train_epochs", "3"], "LoraLoop_OptimizerSettings", "max_train_epochs", 3),
    (["--lr_scheduler", "cosine", "--lr_warmup_steps", "20"], "LoraLoop_OptimizerSettings", "lr_warmup_steps",
     20.0),  # a FLOAT widget (below 1 a ratio)
    (["--lr_scheduler_num_cycles", "3"], "LoraLoop_OptimizerSettings", "lr_scheduler_num_cycles", 3),
    (["--lr_scheduler_power", "2"], "LoraLoop_OptimizerSettings", "lr_scheduler_power", 2.0),
    (["--use_lion_optimizer"], "LoraLoop_TrainLoRA", "optimizer", "Lion"),
    (["--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=10"], "LoraLoop_OptimizerSettings",
     "lr_scheduler_type", "StepLR"),
    (["--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=10", "gamma=0.5"],
     "LoraLoop_OptimizerSettings", "lr_scheduler_args", "step_size=10 gamma=0.5"),
    (["--max_grad_norm", "0"], "LoraLoop_OptimizerSettings", "max_grad_norm", 0.0),
    (["--gradient_accumulation_steps", "4"], "LoraLoop_OptimizerSettings", "gradient_accumulation_steps", 4),
    (["--mixed_precision", "bf16"], "LoraLoop_OptimizerSettings", "mixed_precision", "bf16"),
    (["--optimizer_args", "weight_decay=0.05"], "LoraLoop_OptimizerSettings", "optimizer_args", "weight_decay=0.05"),
    (["--noise_offset", "0.05"], "LoraLoop_NoiseLossSettings", "noise_offset", 0.05),
    (["--min_snr_gamma", "5"], "LoraLoop_NoiseLossSettings", "min_snr_gamma", 5.0),
    (["--min_timestep", "100"], "LoraLoop_NoiseLossSettings", "min_timestep", 100),
    (["--max_timestep", "900"], "LoraLoop_NoiseLossSettings", "max_timestep", 900),
    (["--loss_type", "l1"], "LoraLoop_NoiseLossSettings", "loss_type", "l1"),
    (["--loss_type", "smooth_l1"], "LoraLoop_NoiseLossSettings", "loss_type", "smooth_l1"),
    (["--huber_schedule", "exponential"], "LoraLoop_NoiseLossSettings", "huber_schedule", "exponential"),
    (["--huber_c", "0.2"], "LoraLoop_NoiseLossSettings", "huber_c", 0.2),
    (["--huber_scale", "2"], "LoraLoop_NoiseLossSettings", "huber_scale", 2.0),
    (["--noise_offset", "0.1", "--noise_offset_random_strength"], "LoraLoop_NoiseLossSettings",
     "noise_offset_random_strength", True),
    (["--noise_offset", "0.1", "--adaptive_noise_scale", "0.01"], "LoraLoop_NoiseLossSettings",
     "adaptive_noise_scale", 0.01),
    (["--multires_noise_iterations", "6"], "LoraLoop_NoiseLossSettings", "multires_noise_iterations", 6),
    (["--multires_noise_discount", "0.1"], "LoraLoop_NoiseLossSettings", "multires_noise_discount", 0.1),
    (["--ip_noise_gamma", "0.1"], "LoraLoop_NoiseLossSettings", "ip_noise_gamma", 0.1),
    (["--ip_noise_gamma_random_strength"], "LoraLoop_NoiseLossSettings", "ip_noise_gamma_random_strength", True),
    (["--debiased_estimation_loss"], "LoraLoop_NoiseLossSettings", "debiased_estimation_loss", True),
    (["--scale_v_pred_loss_like_noise_pred"], "LoraLoop_NoiseLossSettings", "scale_v_pred_loss_like_noise_pred",
     True),
    (["--v_pred_like_loss", "0.5"], "LoraLoop_NoiseLossSettings", "v_pred_like_loss", 0.5),
    (["--zero_terminal_snr"], "LoraLoop_NoiseLossSettings", "zero_terminal_snr", True),
    (["--timestep_sampling", "sigmoid"], "LoraLoop_NoiseLossSettings", "timestep_sampling", "sigmoid"),
    (["--guidance_scale", "1.0"], "LoraLoop_NoiseLossSettings", "guidance_scale", 1.0),
    (["--save_every_n_steps", "100"], "LoraLoop_CheckpointSettings", "save_every_n_steps", 100),
    (["--save_every_n_epochs", "2"], "LoraLoop_CheckpointSettings", "save_every_n_epochs", 2),
    (["--save_every_n_epochs", "1", "--save_last_n_epochs", "3"], "LoraLoop_CheckpointSettings", "save_last_n", 3),
    (["--save_every_n_steps", "100", "--save_last_n_steps", "1000"], "LoraLoop_CheckpointSettings", "save_last_n",
     math.ceil(1001 / 100)),
    (["--save_precision", "fp16"], "LoraLoop_CheckpointSettings", "save_dtype", "fp16"),
    (["--save_precision", "bf16"], "LoraLoop_SaveLoRA", "save_dtype", "bf16"),
    (["--save_precision", "float"], "LoraLoop_SaveLoRA", "save_dtype", "fp32"),
    (["--resume", "ck/last-step00000100-state.json"], "LoraLoop_CheckpointSettings", "resume_from",
     os.path.abspath("ck/last-step00000100-state.json")),
    (["--output_name", "y"], "LoraLoop_SaveLoRA", "filename", "y"),
    (["--network_dropout", "0.1"], "LoraLoop_NetworkOptions", "network_dropout", 0.1),
    (["--network_weights", "w.safetensors", "--dim_from_weights"], "LoraLoop_NetworkOptions", "dim_from_weights",
     True),
    (["--network_weights", "w.safetensors"], "LoraLoop_NetworkOptions", "dim_from_weights", False),
    (["--scale_weight_norms", "1"], "LoraLoop_NetworkTraining", "scale_weight_norms", 1.0),
]


@pytest.mark.parametrize("argv,class_type,name,value", MAPPED_VALUES)
def test_mapped_value_lands_in_its_node_input(argv, class_type, name, value):
    _, g, _ = run(BASE + argv)
    got = by_type(g, class_type)[name]
    assert got == value and type(got) is type(value)


def test_network_options_and_lr_args():
    """sd-scripts' network args beyond conv and blocks: the dropouts and block dims go to the Network Options node
    of Inject LoRA, LoRA+ and the block lr weights to the Network Training node of Train LoRA."""
    dims = ",".join(["4"] * 25)
    _, g, _ = run(BASE + ["--network_args", "rank_dropout=0.2", "module_dropout=0.1", f"block_dims={dims}",
                          f"block_alphas={dims}", "conv_block_dims=" + dims, "loraplus_lr_ratio=16",
                          "loraplus_unet_lr_ratio=8", "loraplus_text_encoder_lr_ratio=4", "down_lr_weight=sine",
                          "mid_lr_weight=0.5", "up_lr_weight=1,1,0", "block_lr_zero_threshold=0.1"])
    options, training = by_type(g, "LoraLoop_NetworkOptions"), by_type(g, "LoraLoop_NetworkTraining")
    assert (options["rank_dropout"], options["module_dropout"], options["block_dims"], options["block_alphas"],
            options["conv_block_dims"], options["conv_block_alphas"]) == (0.2, 0.1, dims, dims, dims, "")
    assert (training["loraplus_lr_ratio"], training["loraplus_unet_lr_ratio"],
            training["loraplus_text_encoder_lr_ratio"], training["down_lr_weight"], training["mid_lr_weight"],
            training["up_lr_weight"], training["block_lr_zero_threshold"]) == (16.0, 8.0, 4.0, "sine", "0.5",
                                                                               "1,1,0", 0.1)
    assert by_type(g, "LoraLoop_InjectLoRA")["network_options"] == ["network_options", 0]
    assert by_type(g, "LoraLoop_TrainLoRA")["network_training"] == ["network_training", 0]
    _, g, _ = run(BASE)  # nothing given: the nodes carry the defaults (off)
    assert by_type(g, "LoraLoop_NetworkOptions")["network_dropout"] == 0.0
    assert by_type(g, "LoraLoop_NetworkTraining")["loraplus_lr_ratio"] == 0.0
    msg = refused(BASE + ["--network_module", "networks.lora_flux", "--network_args", "down_lr_weight=sine"])
    assert "down_lr_weight=sine (networks.lora only" in msg
    assert "a number" in refused(BASE + ["--network_args", "rank_dropout=x"])
    assert "rank_dropout" in refused(BASE + ["--network_args", "rank_dropout=1.5"])
    assert "cosine, sine" in refused(BASE + ["--network_args", "up_lr_weight=2"])
    assert "needs --network_weights" in refused(BASE + ["--dim_from_weights"])


def test_every_mapped_argument_is_exercised():
    covered = {a[2:].split("=")[0] for argv, *_ in MAPPED_VALUES for a in argv if a.startswith("--")}
    covered |= {"unet_lr", "text_encoder_lr", "optimizer_type", "use_8bit_adam", "network_module", "network_args",
                "network_train_text_encoder_only", "sigmoid_scale", "discrete_flow_shift", "model_prediction_type",
                "sample_every_n_steps", "sample_sampler", "save_last_n_steps", "conditioning_data_dir"}
    mapped = {o.name for o in kc.OPTIONS if o.kind == kc.MAPPED}
    assert mapped - covered == set()


def test_save_last_n_with_both_cadences_is_unsupported():
    assert "--save_last_n_steps" in refused(BASE + ["--save_every_n_steps", "10", "--save_every_n_epochs", "1",
                                                    "--save_last_n_steps", "100"])


# ------------------------------------------------------------------------------------------ previews
def test_previews_from_a_prompt_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog --n blurry --w 768 --h 512 --d 1 --l 7 --s 20\n# comment\na cat\n", encoding="utf-8")
    _, g, _ = run(BASE + ["--sample_prompts", str(prompts), "--sample_every_n_steps", "50", "--seed", "5"])
    prev = by_type(g, "LoraLoop_PreviewSettings")
    assert prev["prompts"] == prompts.read_text(encoding="utf-8")  # per-line options stay in the lines
    assert prev["every_n_steps"] == 50 and prev["vae"] == ["checkpoint", 2] and prev["seed"] == 5
    assert (prev["sampler"], prev["scheduler"], prev["steps"], prev["cfg"]) == ("ddim", "normal", 30, 7.5)
    assert g["train"]["inputs"]["preview_settings"] == ["previews", 0]
    _, g, _ = run(BASE + ["--sample_prompts", str(prompts), "--sample_every_n_steps", "50",
                          "--sample_sampler", "k_euler_a"])
    prev = by_type(g, "LoraLoop_PreviewSettings")
    assert (prev["sampler"], prev["scheduler"]) == ("euler_ancestral", "karras")
    _, g, _ = run(FLUX + ["--sample_prompts", str(prompts), "--sample_every_n_steps", "50"])
    prev = by_type(g, "LoraLoop_PreviewSettings")  # sd-scripts' FLUX sampling defaults
    assert (prev["sampler"], prev["steps"], prev["cfg"]) == ("euler", 20, 1.0)
    parsed, g, _ = run(BASE + ["--sample_prompts", str(prompts)])  # no cadence: sd-scripts samples nothing
    assert "LoraLoop_PreviewSettings" not in {n["class_type"] for n in g.values()}
    assert any("--sample_every_n_steps" in n for n in parsed.notes)
    assert "--sample_every_n_epochs" in refused(BASE + ["--sample_prompts", str(prompts),
                                                        "--sample_every_n_epochs", "1"])


def test_previews_from_toml_and_json_prompt_lists(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 640\nsample_steps = 12\n[[prompt.subset]]\nprompt = "a dog"\n'
                    'negative_prompt = "blurry"\n[[prompt.subset]]\nprompt = "a cat"\nseed = 3\n', encoding="utf-8")
    _, g, _ = run(BASE + ["--sample_prompts", str(toml), "--sample_every_n_steps", "5"])
    assert by_type(g, "LoraLoop_PreviewSettings")["prompts"] == \
        "a dog --n blurry --w 640 --s 12\na cat --w 640 --d 3 --s 12"
    js = tmp_path / "p.json"
    js.write_text('[{"prompt": "a bird", "scale": 4.5}, "a fish --s 8"]', encoding="utf-8")
    _, g, _ = run(BASE + ["--sample_prompts", str(js), "--sample_every_n_steps", "5"])
    assert by_type(g, "LoraLoop_PreviewSettings")["prompts"] == "a bird --l 4.5\na fish --s 8"


# ------------------------------------------------------------------------------------------ captions node
def test_caption_settings_node_only_when_set():
    _, g, _ = run(BASE)
    assert "LoraLoop_CaptionSettings" not in {n["class_type"] for n in g.values()}
    assert "caption_settings" not in by_type(g, "LoraLoop_LoadDataset")
    _, g, _ = run(BASE + ["--shuffle_caption", "--keep_tokens", "1"])
    cap = by_type(g, "LoraLoop_CaptionSettings")
    assert cap["secondary_separator"] == "" and cap["caption_prefix"] == ""  # empty = off on the node
    assert by_type(g, "LoraLoop_LoadDataset")["caption_settings"] == ["captions", 0]
    # captions that change per step are not encoded once: still harmless to give Encode Dataset the CLIP
    _, g, _ = run(BASE + ["--shuffle_caption", "--network_train_unet_only"])
    assert by_type(g, "LoraLoop_EncodeDataset")["clip"] == ["checkpoint", 1]


# ------------------------------------------------------------------------------------------ input names
def _field_inputs(cls, names=None):
    out = set()
    for f in dataclasses.fields(cls):
        if names is None or f.name in names:
            out.add(f.metadata.get("widget") or f.name)
    return out


def test_every_emitted_input_name_is_a_node_input():
    ckpt = importlib.import_module(f"{PACKAGE}.trainer.checkpoints")
    prev = importlib.import_module(f"{PACKAGE}.trainer.previews")
    export = importlib.import_module(f"{PACKAGE}.trainer.export")
    T = cfg.TrainConfig
    optimizer_fields = ("lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "text_encoder_lr",
                        "max_grad_norm", "gradient_accumulation_steps", "optimizer_args", "mixed_precision",
                        "max_train_epochs", "optimizer_class", "lr_scheduler_type", "lr_scheduler_args",
                        "text_encoder_lrs")
    noise_fields = ("noise_offset", "min_snr_gamma", "min_timestep", "max_timestep", "loss_type", "timestep_sampling",
                    "sigmoid_scale", "discrete_flow_shift", "guidance_scale", "noise_offset_random_strength",
                    "adaptive_noise_scale", "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma",
                    "ip_noise_gamma_random_strength", "huber_schedule", "huber_c", "huber_scale",
                    "debiased_estimation_loss", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
                    "prior_loss_weight", "masked_loss",
                    "zero_terminal_snr")
    main_fields = ("max_train_steps", "learning_rate", "optimizer_type", "lr_scheduler", "seed", "memory_mode",
                   "blocks_to_swap")
    network_option_fields = ("network_dropout", "rank_dropout", "module_dropout", "block_dims", "block_alphas",
                             "conv_block_dims", "conv_block_alphas", "dim_from_weights", "algo", "dora_wd", "factor",
                             "decompose_both")
    network_training_fields = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                               "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                               "scale_weight_norms")
    allowed = {
        "LoraLoop_LoadDataset": {"path", "caption_settings", "conditioning_data_dir"} | _field_inputs(
            dataset_mod.SubsetConfig, ("caption_extension", "num_repeats", "class_tokens", "alpha_mask")),
        "LoraLoop_CaptionSettings": _field_inputs(captions_mod.CaptionOptions) | {"flip_aug", "color_aug", "random_crop"},
        "LoraLoop_BucketImages": {"dataset"} | _field_inputs(dataset_mod.GroupConfig),
        "LoraLoop_EncodeDataset": {"dataset", "vae", "clip", "cache_latents_to_disk", "vae_batch_size",
                                   "max_token_length"},  # augment_variants: the node's default
        "LoraLoop_InjectLoRA": {"model", "clip", "init_lora", "network_options"}
        | _field_inputs(cfg.NetworkConfig) - _field_inputs(cfg.NetworkConfig, network_option_fields),
        "LoraLoop_NetworkOptions": _field_inputs(cfg.NetworkConfig, network_option_fields),
        "LoraLoop_NetworkTraining": _field_inputs(T, network_training_fields),
        "LoraLoop_TrainLoRA": {"model", "network", "dataset", "clip", "optimizer_settings", "noise_loss_settings",
                               "checkpoint_settings", "preview_settings", "output_name", "network_training"}
        | _field_inputs(T, main_fields),
        # max_train_epochs: the Optimizer Settings input being added with the headless command
        "LoraLoop_OptimizerSettings": _field_inputs(T, optimizer_fields) | {"max_train_epochs"},
        "LoraLoop_NoiseLossSettings": _field_inputs(T, noise_fields),
        "LoraLoop_CheckpointSettings": _field_inputs(ckpt.CheckpointConfig) - {"output_name"} | {"train_state"},
        "LoraLoop_PreviewSettings": {"vae"} | _field_inputs(prev.PreviewConfig),
        "LoraLoop_SaveLoRA": {"network", "model", "clip"} | _field_inputs(export.SaveConfig),
        "CheckpointLoaderSimple": {"ckpt_name"}, "UNETLoader": {"unet_name", "weight_dtype"},
        "UnetLoaderGGUF": {"unet_name"}, "VAELoader": {"vae_name"}, "CLIPLoader": {"clip_name", "type"},
        "DualCLIPLoader": {"clip_name1", "clip_name2", "type"},
        "DualCLIPLoaderGGUF": {"clip_name1", "clip_name2", "type"},
        "TripleCLIPLoader": {"clip_name1", "clip_name2", "clip_name3"},
        "CLIPSetLastLayer": {"clip", "stop_at_clip_layer"},
        "ModelSamplingDiscrete": {"model", "sampling", "zsnr"},
    }
    graphs = [run(README_COMMAND)[1], run(FLUX + ["--sample_prompts", __file__, "--sample_every_n_steps", "1",
                                                  "--shuffle_caption", "--clip_skip", "2"])[1],
              run(BASE + ["--v_parameterization", "--fp8_base"])[1],
              run(["--pretrained_model_name_or_path=f.gguf", "--clip_l=c.gguf", "--t5xxl=t.gguf", "--ae=a.sft",
                   "--dataset_config=d.toml", "--output_dir=o"])[1]]
    for g in graphs:
        for nid, n in g.items():
            extra = set(n["inputs"]) - allowed[n["class_type"]]
            assert not extra, (nid, n["class_type"], extra)
    # the widget names that differ from the field names are used
    train = graphs[0]["train"]["inputs"]
    assert {"steps", "optimizer", "memory"} <= set(train) and "init_seed" in graphs[0]["inject"]["inputs"]


def test_module_imports_without_comfyui_or_torch():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('p', {os.path.join(ROOT, '__init__.py')!r}, "
            f"submodule_search_locations=[{ROOT!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['p'] = m; spec.loader.exec_module(m)\n"
            "import p.headless.kohya_cli as k\n"
            "k.build_parser()\n"
            "bad = [n for n in ('torch', 'comfy', 'folder_paths') if n in sys.modules]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_argument_table_in_docs_is_current():
    """docs/headless.md lists every sd-scripts argument with its kind and target, generated from OPTIONS."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
    import headless_docs

    with open(headless_docs.PAGE, encoding="utf-8") as f:
        block = headless_docs.current_block(f.read())
    assert block.strip() == headless_docs.render().strip(), \
        "docs/headless.md is stale: run `python tests/support/headless_docs.py`"
    assert "`--network_dim`" in block and "`--max_train_epochs`" in block


# ------------------------------------------------------------------------------------------ validation
def test_validation_arguments_make_the_validation_node():
    _, g, _ = run(BASE)
    assert not [n for n in g.values() if n["class_type"] == "LoraLoop_ValidationSettings"]
    assert "validation_settings" not in g["train"]["inputs"]
    _, g, _ = run(BASE + ["--validation_split", "0.1", "--validation_seed", "7", "--validate_every_n_steps", "50",
                          "--validate_every_n_epochs", "2", "--max_validation_steps", "4"])
    assert by_type(g, "LoraLoop_ValidationSettings") == {
        "validation_split": 0.1, "validation_seed": 7, "validate_every_n_steps": 50, "validate_every_n_epochs": 2,
        "max_validation_steps": 4}
    assert g["train"]["inputs"]["validation_settings"] == ["validation", 0]
    # one of them alone: the others at sd-scripts' 'not given'
    _, g, _ = run(BASE + ["--validation_split", "0.2"])
    assert by_type(g, "LoraLoop_ValidationSettings") == {
        "validation_split": 0.2, "validation_seed": -1, "validate_every_n_steps": 0, "validate_every_n_epochs": 0,
        "max_validation_steps": 0}
    assert "validation_split" in refused(BASE + ["--validation_split", "1.5"])


def test_mask_folder_for_a_train_data_dir():
    parsed, g, _ = run(["--pretrained_model_name_or_path=m.safetensors", "--train_data_dir=imgs", "--resolution=512",
                        "--output_dir=out", "--masked_loss", "--conditioning_data_dir=masks"])
    assert by_type(g, "LoraLoop_LoadDataset")["conditioning_data_dir"] == os.path.abspath("masks")
    assert by_type(g, "LoraLoop_NoiseLossSettings")["masked_loss"] is True
    assert "[[datasets.subsets]]" in refused(BASE + ["--conditioning_data_dir=masks"])


def test_max_token_length_defaults_to_sd_scripts_cut():
    """sd-scripts cuts captions to 75 CLIP tokens unless --max_token_length says 150 or 225; the headless command
    does the same (the nodes' own default, 0, keeps ComfyUI's whole caption)."""
    _, g, _ = run(BASE)
    assert by_type(g, "LoraLoop_EncodeDataset")["max_token_length"] == 75
    _, g, _ = run(BASE + ["--max_token_length", "150"])
    assert by_type(g, "LoraLoop_EncodeDataset")["max_token_length"] == 150

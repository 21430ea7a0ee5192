"""The headless trainer (headless/train_network.py) as users run it: sd-scripts' command line under ``accelerate
launch``, on a single-file SD1.5 checkpoint written in code and loaded by ComfyUI's own checkpoint loader; two
processes on gloo against one; Ctrl-C, previews into <output_dir>/sample, checkpoints and --resume."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

import comfy_env
import graphs
from comfy_fixtures import comfy, tiny_sd15  # noqa: F401

SCRIPT = os.path.join(comfy_env.PACK_ROOT, "headless", "train_network.py")
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, COMFYUI_PATH=comfy_env.find_comfyui() or "", OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _dataset(tmp_path, batch: int, name: str = "my_dataset.toml") -> str:
    images = graphs.make_dataset(str(tmp_path / "img"), n=2, size=(64, 64))
    toml = tmp_path / name
    toml.write_text(f'[general]\ncaption_extension = ".txt"\n\n[[datasets]]\nresolution = 64\nbatch_size = {batch}\n\n'
                    f'[[datasets.subsets]]\nimage_dir = "{images}"\nnum_repeats = 1\n', encoding="utf-8")
    return str(toml)


def _run(cmd: list[str], cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=str(cwd), env=_env(), capture_output=True, text=True, timeout=timeout)
    return p


def _lora_not_loaded(ckpt: str, lora_path: str) -> tuple[int, int]:
    """(LoRA keys, 'lora key not loaded' warnings) when ComfyUI's own loader applies the file to the checkpoint."""
    import comfy.sd
    import comfy.utils

    capture = comfy_env.boot()["log"]
    before = len(capture.matching("lora key not loaded"))
    model, clip, _vae, *_ = comfy.sd.load_checkpoint_guess_config(ckpt)
    lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
    comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    return len(lora), len(capture.matching("lora key not loaded")) - before


def test_the_sd_scripts_command_line_under_accelerate(comfy, tiny_sd15, tmp_path):
    """The issue's command, with only the script path changed."""
    toml = _dataset(tmp_path, batch=2)
    shutil_ckpt = tmp_path / "model.safetensors"
    os.symlink(tiny_sd15, shutil_ckpt)
    cmd = ACCELERATE + ["--num_cpu_threads_per_process", "1", SCRIPT,
                        "--pretrained_model_name_or_path=model.safetensors", f"--dataset_config={toml}",
                        "--output_dir=./output", "--output_name=my_lora", "--network_module=networks.lora",
                        "--network_dim=16", "--network_alpha=8", "--learning_rate=1e-4", "--max_train_epochs=10"]
    p = _run(cmd, tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    out = p.stdout + p.stderr
    assert "pass --seed" in out  # no --seed: a random one, printed so the run can be repeated
    path = tmp_path / "output" / "my_lora.safetensors"
    assert path.is_file() and str(path) in out
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_network_dim"] == "16" and float(meta["ss_network_alpha"]) == 8.0
    assert meta["ss_network_module"] == "networks.lora"
    assert int(meta["ss_max_train_steps"]) == 10  # 10 epochs x one batch of two images
    assert float(meta["ss_learning_rate"]) == pytest.approx(1e-4)
    # sd-scripts trains the text encoder of SD1 unless --network_train_unet_only
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_") for k in keys)
    n, unloaded = comfy_env.call(_lora_not_loaded, tiny_sd15, str(path))
    assert n == len(keys) and unloaded == 0


def _relative(a: dict, b: dict) -> float:
    keys = [k for k in a if not k.endswith(".alpha")]
    assert set(a) == set(b)
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)
    return float((num / sum((a[k].double() ** 2).sum() for k in keys)).sqrt())


def test_two_processes_train_what_one_process_trains(comfy, tiny_sd15, tmp_path):
    """accelerate launch --num_processes 2 (gloo on the CPU) with train_batch_size 1 = one process with batch 2."""
    common = [SCRIPT, f"--pretrained_model_name_or_path={tiny_sd15}", "--output_name=lora", "--network_dim=4",
              "--learning_rate=1e-3", "--max_train_steps=3", "--seed=3", "--save_precision=float"]
    one = _run(ACCELERATE + ["--num_processes", "1"] + common + [f"--dataset_config={_dataset(tmp_path, 2, 'b2.toml')}",
                                                                  "--output_dir=./one"], tmp_path)
    assert one.returncode == 0, one.stderr[-5000:]
    two = _run(ACCELERATE + ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"] + common
               + [f"--dataset_config={_dataset(tmp_path, 1, 'b1.toml')}", "--output_dir=./two"], tmp_path)
    assert two.returncode == 0, two.stderr[-5000:]
    assert "process 0 of 2" in two.stdout + two.stderr and "(2 processes)" in two.stdout + two.stderr
    a, b = load_file(str(tmp_path / "one" / "lora.safetensors")), load_file(str(tmp_path / "two" / "lora.safetensors"))
    rel = _relative(a, b)
    print(f"\n2 processes vs 1, relative difference of the whole LoRA: {rel:.2e}")
    # AdamW: float32 kernels differ between batch 1 and batch 2 in the last bits (~1e-7), and Adam's first steps
    # turn even the tiniest gradient into a full-size update, so single elements may differ more; the LoRA as a
    # whole is the same
    assert rel <= 1e-5
    # a run with another global batch is not: the comparison can fail
    other = _run(ACCELERATE + ["--num_processes", "1"] + common + [f"--dataset_config={tmp_path / 'b1.toml'}",
                                                                    "--output_dir=./other"], tmp_path)
    assert other.returncode == 0
    assert _relative(a, load_file(str(tmp_path / "other" / "lora.safetensors"))) > 1e-3


def test_ctrl_c_keeps_the_last_step_and_resume_continues(comfy, tiny_sd15, tmp_path):
    """Previews every 2 steps into <output_dir>/sample, checkpoints every 2 steps; Ctrl-C saves the step it
    finished; --resume continues from that state to the end."""
    toml = _dataset(tmp_path, batch=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks pattern --w 64 --h 64 --s 2 --l 1 --d 5\n", encoding="utf-8")
    common = [sys.executable, SCRIPT, f"--pretrained_model_name_or_path={tiny_sd15}", f"--dataset_config={toml}",
              "--output_dir=./out", "--output_name=run", "--network_dim=4", "--learning_rate=1e-3", "--seed=1",
              "--network_train_unet_only", "--save_every_n_steps=2", f"--sample_prompts={prompts}",
              "--sample_every_n_steps=2"]
    proc = subprocess.Popen(common + ["--max_train_steps=400"], cwd=str(tmp_path), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not glob.glob(str(tmp_path / "out" / "run_checkpoints" / "*step00000004*.safetensors")):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-4000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-4000:]
    assert "stopped by Ctrl-C" in out and "--resume" in out
    states = sorted(glob.glob(str(tmp_path / "out" / "run_checkpoints" / "*-state.json")))
    last = max(states, key=lambda s: json.load(open(s, encoding="utf-8"))["step"])
    stopped_at = json.load(open(last, encoding="utf-8"))["step"]
    assert 4 <= stopped_at < 400
    assert not (tmp_path / "out" / "run.safetensors").exists()  # the final file is only written at the end
    samples = sorted(os.listdir(tmp_path / "out" / "sample"))
    assert samples and all(s.startswith("run_") and s.endswith(".png") for s in samples)
    assert "run_000002_00_" in samples[0]
    total = stopped_at + 2
    resumed = _run(common + [f"--max_train_steps={total}", f"--resume={last}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"continuing from step {stopped_at}" in resumed.stdout + resumed.stderr
    with safe_open(str(tmp_path / "out" / "run.safetensors"), "pt") as f:
        assert int(f.metadata()["ss_max_train_steps"]) == total


def test_unknown_arguments_are_listed_in_one_message(comfy, tiny_sd15, tmp_path):
    """(Which arguments are unknown, unsupported or taken care of is tested against sd-scripts' table in
    tests/trainer/test_kohya_cli.py; here: the message reaches the user and the exit status is argparse's.)"""
    p = _run([sys.executable, SCRIPT, f"--pretrained_model_name_or_path={tiny_sd15}", "--train_data_dir=.",
              "--resolution=64", "--no_such_option=1", "--another_one"], tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    line = [ln for ln in p.stderr.splitlines() if "--no_such_option" in ln]
    assert line and "--another_one" in line[0]


def test_ctrl_c_under_accelerate_with_two_processes(comfy, tiny_sd15, tmp_path):
    """Ctrl-C in the terminal reaches the launcher and both processes (one process group): both stop after the
    same step (a collective decision, no rank left waiting in an all-reduce) and process 0 saves it, although the
    launcher follows up with SIGTERM."""
    toml = _dataset(tmp_path, batch=1)
    cmd = ACCELERATE + ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", SCRIPT,
                        f"--pretrained_model_name_or_path={tiny_sd15}", f"--dataset_config={toml}", "--output_dir=./out",
                        "--output_name=run", "--network_dim=4", "--learning_rate=1e-3", "--seed=1",
                        "--network_train_unet_only", "--max_train_steps=2000"]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while "LoRA Loop step: " not in log_path.read_text(errors="replace") or "/2000 [" not in \
                log_path.read_text(errors="replace").split("LoRA Loop step: ")[-1]:
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log_path.read_text(errors="replace")
    assert "stopped by Ctrl-C" in out, out[-4000:]
    saved = glob.glob(str(tmp_path / "out" / "run_checkpoints" / "run-step*-state.json"))
    assert len(saved) == 1, out[-4000:]
    assert 0 < json.load(open(saved[0], encoding="utf-8"))["step"] < 2000


def test_fp8_base_trains_on_the_fp8_weights_comfyui_loads(comfy, tiny_sd15, tmp_path):
    """--fp8_base: ComfyUI's UNETLoader loads the diffusion model as fp8_e4m3fn (the text encoders and VAE come
    from the checkpoint loader) and the LoRA trains on it."""
    p = _run([sys.executable, SCRIPT, f"--pretrained_model_name_or_path={tiny_sd15}",
              f"--dataset_config={_dataset(tmp_path, 2)}", "--output_dir=./out", "--output_name=f8", "--network_dim=4",
              "--learning_rate=1e-3", "--max_train_steps=2", "--seed=3", "--fp8_base", "--network_train_unet_only"],
             tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "model weight dtype torch.float8_e4m3fn" in out
    with safe_open(str(tmp_path / "out" / "f8.safetensors"), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())


def test_lycoris_from_the_command_line(comfy, tiny_sd15, tmp_path):
    """--network_module lycoris.kohya --network_args algo=loha: a LoHa file (its keys, lycoris.kohya in the header;
    the 3x3 convs trained at network_dim as LyCORIS does) that ComfyUI's loader applies with zero unloaded keys."""
    p = _run([sys.executable, SCRIPT, f"--pretrained_model_name_or_path={tiny_sd15}",
              f"--dataset_config={_dataset(tmp_path, 2)}", "--output_dir=./out", "--output_name=loha",
              "--network_module=lycoris.kohya", "--network_args", "algo=loha", "preset=full", "--network_dim=4",
              "--network_alpha=2", "--learning_rate=1e-3", "--max_train_steps=2", "--seed=3"], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    path = tmp_path / "out" / "loha.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == "loha"
    assert keys and all(k.endswith((".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".alpha")) for k in keys)
    assert any("resnets" in k for k in keys)  # the convs, at network_dim
    n, unloaded = comfy_env.call(_lora_not_loaded, tiny_sd15, str(path))
    assert n == len(keys) and unloaded == 0

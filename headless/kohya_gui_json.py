"""The JSON the kohya_ss GUI saves for a LoRA training -> sd-scripts arguments.

Users of bmaltais/kohya_ss keep their LoRA settings as the JSON its LoRA tab writes ("Save config"; the tab also
writes ``<output_name>_<date>.json`` next to the output when training starts). :func:`gui_json_to_args` turns such
a file's dict into the sd-scripts command line the GUI would have run, in ``--name=value`` / ``--flag`` /
``--name v1 v2`` form, ready for ``headless/kohya_cli.parse``; :func:`looks_like_gui_json` tells such a dict from
other JSON.

Read from kohya_ss commit 45088f04af78e11cec5407ff4652ea3ed2c14422 (July 2026; sd-scripts pinned there at
6721028c): ``kohya_gui/lora_gui.py`` (``save_configuration``, ``train_model``), ``kohya_gui/common_gui.py``
(``update_my_data``, ``resolve_lr_warmup_steps``, ``run_cmd_advanced_training``, ``SaveConfigFile``),
``kohya_gui/class_sample_images.py`` and the example files under ``test/config`` and ``presets/lora``. That GUI
does not build a command line: ``train_model`` fills a dict of sd-scripts names, drops the unset values, writes it
as a TOML and runs ``accelerate launch <script> --config_file <toml> <additional_parameters>``. This module
follows that code path; older files (numbers saved as strings, ``"xformers": true``, ``use_8bit_adam``,
``lora_network_weights``, LoRA type ``"LoCon"``) are first updated as the GUI's ``update_my_data`` does when it
opens them.

Conventions of the GUI this follows:

* a value that is ``""``, ``false``, ``null`` or a number equal to 0 is unset and gives no argument (the GUI's
  filter is ``value not in ["", False, None]``, and ``0 == False`` in Python); ``max_data_loader_n_workers`` is
  always passed. ``max_token_length`` 75 is sd-scripts' default length (the GUI always writes the field), so it
  gives no argument; ``lr_scheduler_num_cycles`` / ``lr_scheduler_power`` saved as ``""`` become 1, as the GUI
  reads them. An empty ``wandb_run_name`` stays unset (the GUI falls back to ``output_name``, which only wandb
  logging reads).
* renames: ``max_resolution`` -> ``--resolution`` (as written, e.g. ``512,512``), ``optimizer`` ->
  ``--optimizer_type``, ``sdxl_no_half_vae`` -> ``--no_half_vae``, ``sdxl_cache_text_encoder_outputs`` /
  ``flux1_cache_text_encoder_outputs`` / ``sd3_cache_text_encoder_outputs`` -> ``--cache_text_encoder_outputs``,
  ``sd3_clip_l`` / ``sd3_t5xxl`` -> ``--clip_l`` / ``--t5xxl``, ``xformers`` ("xformers", "sdpa", "none") ->
  ``--xformers`` / ``--sdpa`` / nothing, ... (:data:`TABLE`).
* epochs: the GUI hands ``epoch`` to sd-scripts, which has no such argument; without ``dataset_config`` it
  computes ``--max_train_steps`` from it as images x repeats / batch size / gradient accumulation x epoch
  (x 2 with regularisation images), which is what sd-scripts computes for ``--max_train_epochs``, so ``epoch``
  becomes ``--max_train_epochs`` (the step count can differ by rounding: the GUI rounds the product once,
  sd-scripts counts each epoch's batches, per bucket).
  ``max_train_epochs`` or ``max_train_steps`` set wins over it; with a ``dataset_config`` the GUI computes
  nothing and ``epoch`` is dropped (sd-scripts' default of 1600 steps applies unless ``max_train_steps`` is set).
* warm-up: ``lr_warmup`` is a percentage of the steps. ``lr_warmup_steps`` > 0 wins; else the percentage becomes
  sd-scripts' ratio (``--lr_warmup_steps=0.1`` for 10; 100 gives ``100%``), except with a ``dataset_config``
  and ``max_train_steps`` set, where the GUI computes round(percent x steps / 100). With a ``dataset_config``
  and no ``max_train_steps`` the GUI discards ``lr_warmup_steps`` and only the percentage counts.
* learning rates: ``learning_rate`` always; ``unet_lr`` / ``text_encoder_lr`` 0 mean unset;
  ``--text_encoder_lr`` gets two values (text encoder, then ``t5xxl_lr`` or the same rate again);
  ``--network_train_unet_only`` when ``text_encoder_lr`` is 0 and ``unet_lr`` is not,
  ``--network_train_text_encoder_only`` the other way round. ``stop_text_encoder_training`` is ignored (the GUI
  says it is not supported and sets it to 0).
* ``LoRA_type`` chooses ``--network_module`` and ``--network_args`` (:data:`LORA_TYPES`): "Standard" and
  "Kohya LoCon" -> ``networks.lora`` (``networks.lora_sd3`` for SD3; "Kohya LoCon" adds ``conv_dim`` and
  ``conv_alpha``, "Standard" passes neither), the block-weight / dims / dropout fields that are set, LoRA+
  ratios; "LoRA-FA" -> ``networks.lora_fa``, "Kohya DyLoRA" -> ``networks.dylora``, "Kohya LoHa" / "Kohya LoKr"
  -> ``networks.loha`` / ``networks.lokr``, "Flux1" -> ``networks.lora_flux`` (its block indices "all", which
  is lora_flux's default, are left out), "Flux1 OFT" -> ``networks.oft_flux``, every "LyCORIS/..." type ->
  ``lycoris.kohya`` with its fixed list of ``network_args`` (``algo=...``, ``preset``, ``conv_dim``,
  ``conv_alpha``, ...). The text is split on whitespace after removing double quotes, as the GUI does.
* noise: ``noise_offset_type`` "Original" passes ``noise_offset``, ``adaptive_noise_scale`` and
  ``noise_offset_random_strength``; "Multires" passes ``multires_noise_iterations`` and
  ``multires_noise_discount``. ``clip_skip`` is left out for SDXL (sd-scripts does not apply it there).
* model families: the SDXL / FLUX.1 / SD3 checkboxes choose the script (LoRA Loop takes the union of their
  arguments and ComfyUI detects the model) and gate their panels' keys, which are silently left out when the
  family is off. HunyuanImage, Anima and Lumina (their own sd-scripts scripts) are refused.
* ``sample_prompts`` is text in the JSON; the GUI writes it to ``<output_dir>/sample/prompt.txt`` and passes that
  path. So does :func:`gui_json_to_args` (``prompt_file`` chooses another path), when the text is not empty.
* ``additional_parameters`` is appended after everything else (on the GUI's command line it follows
  ``--config_file``, so it wins), split with :func:`shlex.split` (the GUI removes double quotes and splits on
  whitespace: the same words unless a quoted value holds spaces, which shlex keeps together).
* the JSON keys that are no sd-scripts argument (accelerate launch settings, the model picker, UI state) and the
  values the GUI itself does not pass give notes, not arguments; so do keys this GUI version does not know.

What LoRA Loop itself supports is ``kohya_cli.parse``'s business: every argument the GUI would pass is passed
(``--reg_data_dir``, ``lycoris.kohya``, ``--training_comment`` ... are refused there with its message).

Pure Python (stdlib only); it imports nothing of the pack, so it also works as a plain module.
"""
from __future__ import annotations

import os
import shlex
import string
from dataclasses import dataclass
from typing import Any, Callable

KOHYA_SS_COMMIT = "45088f04af78e11cec5407ff4652ea3ed2c14422"


class GuiJsonError(ValueError):
    """A GUI JSON the GUI itself would refuse to train, or one for a script LoRA Loop's command does not take."""


# ---------------------------------------------------------------------------------------------------- values
def _unset(value: Any) -> bool:
    """The GUI's filter: "", False, None and numbers equal to 0 give no argument (so do empty lists)."""
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    return value is None or (isinstance(value, str) and value == "") or (
        not isinstance(value, str) and value == 0)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _int(value: Any, fallback: int | None = 0) -> int | None:
    number = _number(value)
    return fallback if number is None else int(number)


def _float(value: Any, fallback: float | None = 0.0) -> float | None:
    number = _number(value)
    return fallback if number is None else number


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "none")
    return bool(value)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return _fmt(value) if isinstance(value, (int, float)) else str(value)


def _words(value: Any) -> list[str]:
    """The GUI's ``str(x).replace('"', "").split()`` for optimizer_args, lr_scheduler_args and network_args."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return str(value).replace('"', "").split()


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------------- context
@dataclass
class _Ctx:
    data: dict[str, Any]
    notes: list[str]
    prompt_file: str | None
    network_used: set[str]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    @property
    def sdxl(self) -> bool:
        return _flag(self.get("sdxl"))

    @property
    def flux(self) -> bool:
        return _flag(self.get("flux1_checkbox"))

    @property
    def sd3(self) -> bool:
        return _flag(self.get("sd3_checkbox"))

    @property
    def chroma(self) -> bool:
        return self.flux and str(self.get("model_type", "")).lower() == "chroma"

    @property
    def dataset_config(self) -> bool:
        return bool(self.get("dataset_config", ""))

    @property
    def noise(self) -> str:
        return str(self.get("noise_offset_type", "Original"))

    def note(self, text: str) -> None:
        self.notes.append(text)


# gates: a key of a panel that is off is left out without a note
def _sdxl(c: _Ctx) -> bool: return c.sdxl
def _flux(c: _Ctx) -> bool: return c.flux
def _sd3(c: _Ctx) -> bool: return c.sd3
def _dit(c: _Ctx) -> bool: return c.flux or c.sd3
def _not_flux(c: _Ctx) -> bool: return not c.flux
def _not_dit(c: _Ctx) -> bool: return not (c.flux or c.sd3)
def _original(c: _Ctx) -> bool: return c.noise == "Original"
def _multires(c: _Ctx) -> bool: return c.noise == "Multires"


# ---------------------------------------------------------------------------------------------------- transforms
# A transform takes (JSON value, context) and gives the argument's value (None: unset), or a dict of several
# sd-scripts arguments.
def STR(v, c): return _text(v)
def INT(v, c): return _int(v, None)
def FLOAT(v, c): return _float(v, None)
def FLAG(v, c): return _flag(v)
def WORDS(v, c): return _words(v)
def ALWAYS_INT(v, c): return str(_int(v, 0)) if v is not None else None  # passed even when 0
def CYCLES(v, c): return None if v is None else _int(v, 1)  # "" is read as 1 by the GUI
def POWER(v, c): return None if v is None else _float(v, 1.0)


def _max_token_length(v, c):
    n = _int(v, 75)
    return None if n == 75 else n  # 75 is sd-scripts' default length


def _clip_skip(v, c):
    n = _int(v, None)
    if n and c.sdxl:
        c.note(f"clip_skip {n}: left out for SDXL (sd-scripts does not apply it to SDXL; ComfyUI would)")
        return None
    return n


def _xformers(v, c):
    if v is True or v == "xformers":
        return {"xformers": True}
    if v == "sdpa":
        return {"sdpa": True}
    return {}


def _cache_latents(v, c):  # train_inpainting turns latent caching off
    inpainting = _flag(c.get("train_inpainting")) and not (c.flux or c.sd3)
    return _flag(v) and not inpainting


def _apply_t5_attn_mask(v, c): return True if c.chroma else _flag(v)
def _guidance_scale(v, c): return _float(v, 0.0) if c.chroma else _float(v, None)
def _model_type(v, c): return "chroma" if c.chroma else None
def _clip_l(v, c): return None if c.chroma else _text(v)


def _epoch(v, c):
    epoch = _int(v, 0)
    if _int(c.get("max_train_epochs"), 0) or _int(c.get("max_train_steps"), 0):
        return None  # max_train_epochs (or the given max_train_steps) decides, as sd-scripts does
    if c.dataset_config:
        if epoch:
            c.note(f"epoch {epoch}: not passed with a dataset_config (the GUI gives it to sd-scripts, which has no "
                   f"such argument): sd-scripts' default of 1600 steps applies; set max_train_steps or "
                   f"max_train_epochs instead")
        return None
    return {"max_train_epochs": epoch} if epoch else None


def _warmup(v, c):
    percent = _float(v, 0.0)
    steps = _float(c.get("lr_warmup_steps"), 0.0)
    if c.dataset_config:
        max_steps = _int(c.get("max_train_steps"), 0)
        if max_steps > 0:
            if steps <= 0 and percent:
                steps, percent = float(round(percent * max_steps / 100)), 0.0
        else:
            if steps > 0:
                c.note(f"lr_warmup_steps {_fmt(steps)}: discarded, as the GUI does with a dataset_config and no "
                       f"max_train_steps (only the lr_warmup percentage counts then)")
            steps = 0.0
    if steps > 0:
        if percent > 0:
            c.note("lr_warmup and lr_warmup_steps both set: lr_warmup_steps wins (as in the GUI)")
        return {"lr_warmup_steps": str(int(steps))}
    if percent:
        ratio = percent / 100
        return {"lr_warmup_steps": repr(ratio) if ratio < 1 else f"{_fmt(percent)}%"}
    return {}


def _learning_rates(v, c):
    if not any(k in c.data for k in ("learning_rate", "text_encoder_lr", "unet_lr")):
        return {}
    lr = _float(c.get("learning_rate"), 0.0)
    te = _float(v, 0.0)
    unet = _float(c.get("unet_lr"), 0.0)
    t5 = _float(c.get("t5xxl_lr"), 0.0)
    if te == 0 and t5 > 0:
        raise GuiJsonError("t5xxl_lr is set but text_encoder_lr is 0: the GUI refuses this (a T5XXL rate needs a "
                           "text encoder rate)")
    if lr == 0 and te == 0 and unet == 0:
        raise GuiJsonError("learning_rate, text_encoder_lr and unet_lr are all 0: the GUI refuses this")
    return {
        "text_encoder_lr": [te, t5 if t5 > 0 else te] if te > 0 else None,
        "unet_lr": unet or None,
        "network_train_unet_only": te == 0 and unet != 0,
        "network_train_text_encoder_only": te != 0 and unet == 0,
    }


def _sample_prompts(v, c):
    text = "" if v is None else str(v)
    if not text.strip():
        return None
    path = c.prompt_file or os.path.join(_text(c.get("output_dir")) or "", "sample", "prompt.txt")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    c.note(f"sample_prompts: written to {path} (as the GUI does)")
    return path


def _network(v, c):
    lora_type = "Standard" if v is None or v == "" else str(v)
    entry = LORA_TYPES.get(lora_type)
    if entry is None:
        raise GuiJsonError(f"LoRA_type {lora_type!r}: not a LoRA type of this kohya_ss version "
                           f"({', '.join(LORA_TYPES)})")
    module, build = entry
    if c.sd3 and module == "networks.lora":
        module = "networks.lora_sd3"
    text = build(c)
    for key in _LORAPLUS:  # appended for every type
        value = _value(c, key)
        if value:
            text += f" {key}={value}"
    words = _words(text)
    return {"network_module": module, "network_args": words}


# ---------------------------------------------------------------------------------------------------- LoRA types
# network_args keys of the LoRA tab with the GUI's defaults (a key the chosen type does not use gives a note when
# it differs from its default)
NETWORK_KEYS: dict[str, Any] = {
    "LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "factor": -1, "bypass_mode": False, "dora_wd": False,
    "use_cp": False, "use_tucker": False, "use_scalar": False, "rank_dropout_scale": False, "constrain": 0.0,
    "rescaled": False, "train_norm": False, "decompose_both": False, "train_on_input": True, "unit": 1,
    "rank_dropout": 0, "module_dropout": 0, "down_lr_weight": "", "mid_lr_weight": "", "up_lr_weight": "",
    "block_lr_zero_threshold": "", "block_dims": "", "block_alphas": "", "conv_block_dims": "",
    "conv_block_alphas": "", "loraplus_lr_ratio": 0, "loraplus_unet_lr_ratio": 0,
    "loraplus_text_encoder_lr_ratio": 0, "train_lora_ggpo": False, "ggpo_sigma": 0.03, "ggpo_beta": 0.01,
    "img_attn_dim": "", "img_mlp_dim": "", "img_mod_dim": "", "single_dim": "", "txt_attn_dim": "",
    "txt_mlp_dim": "", "txt_mod_dim": "", "single_mod_dim": "", "in_dims": "", "train_double_block_indices": "all",
    "train_single_block_indices": "all", "enable_all_linear": False, "split_qkv": False, "train_t5xxl": False,
    "train_blocks": "all",
}
_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_NUMERIC_NETWORK_KEYS = {"conv_dim", "conv_alpha", "factor", "constrain", "unit", "rank_dropout", "module_dropout",
                         "ggpo_sigma", "ggpo_beta", *_LORAPLUS}


def _value(c: _Ctx, key: str) -> Any:
    """A network key's value as the GUI's component holds it (numbers from old files' strings)."""
    c.network_used.add(key)
    value = c.get(key, NETWORK_KEYS.get(key))
    if key in _NUMERIC_NETWORK_KEYS and isinstance(value, str):
        number = _number(value)
        value = NETWORK_KEYS.get(key) if number is None else (int(number) if number.is_integer() else number)
    return value


def _template(text: str) -> Callable[[_Ctx], str]:
    """A fixed network_args text with ``{key}`` filled from the JSON (the GUI's f-strings for LyCORIS types)."""
    keys = [name for _, name, _, _ in string.Formatter().parse(text) if name]

    def build(c: _Ctx) -> str:
        return text.format(**{k: _value(c, k) for k in keys})
    return build


def _set_keys(*keys: str, prefix: str = "", skip: tuple = ()) -> Callable[[_Ctx], str]:
    """The GUI's kohya types: ``key=value`` for each listed key whose value is set (truthy; ``skip``: values that
    mean sd-scripts' default)."""
    def build(c: _Ctx) -> str:
        text = prefix.format(**{k: _value(c, k) for k in ("conv_dim", "conv_alpha")}) if prefix else ""
        for key in keys:
            value = _value(c, key)
            if value and value not in skip:
                text += f" {key}={value}"
        return text
    return build


_BLOCKS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
           "block_alphas", "conv_block_dims", "conv_block_alphas")


def _dropouts(c: _Ctx) -> str:
    text = ""
    for key in ("rank_dropout", "module_dropout"):
        value = _value(c, key)
        if value is not None and _float(value, 0.0) > 0:
            text += f" {key}={value}"
    return text


def _flux_lora(c: _Ctx) -> str:
    keys = ["ggpo_sigma", "ggpo_beta"] if _flag(_value(c, "train_lora_ggpo")) else []
    keys += ["img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim",
             "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices", "train_single_block_indices"]
    text = _set_keys(*keys, skip=("all",))(c)  # block indices "all": every block, lora_flux's default
    _value(c, "train_blocks")
    if _flag(c.get("split_mode")):
        if c.get("train_blocks", "all") != "single":
            c.note("split_mode: train_blocks becomes 'single' (as the GUI forces it)")
        text += " train_blocks=single"
    if _flag(_value(c, "split_qkv")):
        text += " split_qkv=True"
    if _flag(_value(c, "train_t5xxl")) and c.flux:
        text += " train_t5xxl=True"
    return text + _dropouts(c)


def _native_loha_lokr(lokr: bool) -> Callable[[_Ctx], str]:
    def build(c: _Ctx) -> str:
        parts = []
        conv_dim, conv_alpha = _value(c, "conv_dim"), _value(c, "conv_alpha")
        if conv_dim is not None and _float(conv_dim, 0.0) > 0:
            parts.append(f"conv_dim={int(_float(conv_dim))}")
            if conv_alpha is not None:
                parts.append(f"conv_alpha={_fmt(_float(conv_alpha))}")
        if _flag(_value(c, "use_tucker")):
            parts.append("use_tucker=True")
        factor = _value(c, "factor")
        if lokr and factor is not None and _int(factor, -1) != -1:
            parts.append(f"factor={_int(factor)}")
        return " ".join(parts) + _dropouts(c)
    return build


def _oft_flux(c: _Ctx) -> str:
    return " enable_all_linear=True" if _flag(_value(c, "enable_all_linear")) else ""


_LYCORIS_COMMON = "preset={LyCORIS_preset} conv_dim={conv_dim} conv_alpha={conv_alpha}"
_LYCORIS_LOCON = (_LYCORIS_COMMON + " use_tucker={use_tucker} rank_dropout={rank_dropout} bypass_mode={bypass_mode}"
                  " dora_wd={dora_wd} module_dropout={module_dropout} use_tucker={use_tucker}")

# LoRA_type -> (network_module, network_args builder); lora_gui.train_model's branches
LORA_TYPES: dict[str, tuple[str, Callable[[_Ctx], str]]] = {
    "Standard": ("networks.lora", _set_keys(*_BLOCKS, "rank_dropout", "module_dropout")),
    "Kohya LoCon": ("networks.lora", _set_keys(*_BLOCKS, "rank_dropout", "module_dropout",
                                               prefix="conv_dim={conv_dim} conv_alpha={conv_alpha}")),
    "LoRA-FA": ("networks.lora_fa", _set_keys(*_BLOCKS, "rank_dropout", "module_dropout")),
    "Kohya DyLoRA": ("networks.dylora", _set_keys("conv_dim", "conv_alpha", *_BLOCKS, "unit", "rank_dropout",
                                                  "module_dropout")),
    "Kohya LoHa": ("networks.loha", _native_loha_lokr(False)),
    "Kohya LoKr": ("networks.lokr", _native_loha_lokr(True)),
    "Flux1": ("networks.lora_flux", _flux_lora),
    "Flux1 OFT": ("networks.oft_flux", _oft_flux),
    "LyCORIS/BOFT": ("lycoris.kohya", _template(
        _LYCORIS_COMMON + " module_dropout={module_dropout} use_tucker={use_tucker} rank_dropout={rank_dropout}"
        " rank_dropout_scale={rank_dropout_scale} algo=boft train_norm={train_norm}")),
    "LyCORIS/Diag-OFT": ("lycoris.kohya", _template(
        _LYCORIS_COMMON + " module_dropout={module_dropout} use_tucker={use_tucker} rank_dropout={rank_dropout}"
        " rank_dropout_scale={rank_dropout_scale} constraint={constrain} rescaled={rescaled} algo=diag-oft"
        " train_norm={train_norm}")),
    "LyCORIS/DyLoRA": ("lycoris.kohya", _template(
        _LYCORIS_COMMON + " use_tucker={use_tucker} block_size={unit} rank_dropout={rank_dropout}"
        " module_dropout={module_dropout} algo=dylora train_norm={train_norm}")),
    "LyCORIS/GLoRA": ("lycoris.kohya", _template(
        _LYCORIS_COMMON + " use_tucker={use_tucker} rank_dropout={rank_dropout} module_dropout={module_dropout}"
        " rank_dropout_scale={rank_dropout_scale} algo=glora train_norm={train_norm}")),
    "LyCORIS/iA3": ("lycoris.kohya", _template(_LYCORIS_COMMON + " train_on_input={train_on_input} algo=ia3")),
    "LyCORIS/LoCon": ("lycoris.kohya", _template(
        _LYCORIS_LOCON + " use_scalar={use_scalar} rank_dropout_scale={rank_dropout_scale} algo=locon"
        " train_norm={train_norm}")),
    "LyCORIS/LoHa": ("lycoris.kohya", _template(
        _LYCORIS_LOCON + " use_scalar={use_scalar} rank_dropout_scale={rank_dropout_scale} algo=loha"
        " train_norm={train_norm}")),
    "LyCORIS/LoKr": ("lycoris.kohya", _template(
        _LYCORIS_COMMON + " use_tucker={use_tucker} rank_dropout={rank_dropout} bypass_mode={bypass_mode}"
        " dora_wd={dora_wd} module_dropout={module_dropout} factor={factor} use_cp={use_cp}"
        " use_scalar={use_scalar} decompose_both={decompose_both} rank_dropout_scale={rank_dropout_scale}"
        " algo=lokr train_norm={train_norm}")),
    "LyCORIS/Native Fine-Tuning": ("lycoris.kohya", _template(
        "preset={LyCORIS_preset} rank_dropout={rank_dropout} module_dropout={module_dropout}"
        " rank_dropout_scale={rank_dropout_scale} algo=full train_norm={train_norm}")),
}


# ---------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Key:
    """One key of the GUI's LoRA JSON: the sd-scripts argument it gives (``None``: none; ``transform`` may give
    several as a dict), how its value is read, the panel it belongs to (``when``: left out silently when that
    panel is off), and for keys that give no argument why (``note``, none: read with another key; ``quiet``:
    values that need no note). ``always``: the transform runs when the key is missing too."""

    gui: str
    arg: str | None
    transform: Callable[[Any, _Ctx], Any] | None = None
    when: Callable[[_Ctx], bool] | None = None
    note: str = ""
    quiet: tuple = ()
    always: bool = False


def _k(gui, arg=None, transform=STR, when=None, note="", quiet=(), always=False) -> Key:
    return Key(gui, arg, transform if arg is not None else None, when, note, tuple(quiet), always)


_UI = "GUI state"
_ACCEL = "an accelerate launch setting of the GUI (LoRA Loop: see docs/headless.md for several GPUs)"
_NOT_SD = "no argument of sd-scripts' LoRA scripts (the GUI writes it into the TOML, sd-scripts ignores it)"
_SCRIPT = "chooses the GUI's training script; LoRA Loop's command takes all of their arguments and ComfyUI " \
          "detects the model"

TABLE: tuple[Key, ...] = (
    # source model
    _k("pretrained_model_name_or_path", "pretrained_model_name_or_path"),
    _k("v2", "v2", FLAG),
    _k("v_parameterization", "v_parameterization", FLAG),
    _k("sdxl", None, note=_SCRIPT + " (sdxl_train_network.py)", quiet=(False,)),
    _k("flux1_checkbox", None, note=_SCRIPT + " (flux_train_network.py)", quiet=(False,)),
    _k("sd3_checkbox", None, note=_SCRIPT + " (sd3_train_network.py)", quiet=(False,)),
    _k("dataset_config", "dataset_config"),
    _k("save_model_as", "save_model_as"),
    _k("save_precision", "save_precision"),
    _k("train_data_dir", "train_data_dir"),
    _k("output_name", "output_name"),
    _k("model_list", None, note=_UI + " (the model picker; pretrained_model_name_or_path is what trains)",
       quiet=("custom",)),
    _k("training_comment", "training_comment"),
    # folders
    _k("logging_dir", "logging_dir"),
    _k("reg_data_dir", "reg_data_dir"),
    _k("output_dir", "output_dir"),
    # basic training
    _k("max_resolution", "resolution"),
    _k("learning_rate", "learning_rate", FLOAT),
    _k("lr_scheduler", "lr_scheduler"),
    _k("lr_warmup", "lr_warmup_steps", _warmup, always=True),
    _k("lr_warmup_steps", None),  # read with lr_warmup
    _k("train_batch_size", "train_batch_size", INT),
    _k("epoch", "max_train_epochs", _epoch, always=True),
    _k("save_every_n_epochs", "save_every_n_epochs", INT),
    _k("seed", "seed", INT),
    _k("cache_latents", "cache_latents", _cache_latents),
    _k("cache_latents_to_disk", "cache_latents_to_disk", _cache_latents),
    _k("train_inpainting", "train_inpainting", FLAG, when=_not_dit),
    _k("caption_extension", "caption_extension"),
    _k("enable_bucket", "enable_bucket", FLAG),
    _k("stop_text_encoder_training", None, note="ignored (the GUI does not support it and sets it to 0)"),
    _k("min_bucket_reso", "min_bucket_reso", INT),
    _k("max_bucket_reso", "max_bucket_reso", INT),
    _k("max_train_epochs", "max_train_epochs", INT),
    _k("max_train_steps", "max_train_steps", INT),
    _k("lr_scheduler_num_cycles", "lr_scheduler_num_cycles", CYCLES),
    _k("lr_scheduler_power", "lr_scheduler_power", POWER),
    _k("optimizer", "optimizer_type"),
    _k("optimizer_args", "optimizer_args", WORDS),
    _k("lr_scheduler_args", "lr_scheduler_args", WORDS),
    _k("lr_scheduler_type", "lr_scheduler_type"),
    _k("max_grad_norm", "max_grad_norm", FLOAT),
    # accelerate launch (mixed_precision also goes into the GUI's TOML)
    _k("mixed_precision", "mixed_precision"),
    _k("num_cpu_threads_per_process", None, note=_ACCEL, quiet=(2, 1)),
    _k("num_processes", None, note=_ACCEL, quiet=(1,)),
    _k("num_machines", None, note=_ACCEL, quiet=(1,)),
    _k("multi_gpu", None, note=_ACCEL),
    _k("gpu_ids", None, note=_ACCEL),
    _k("main_process_port", None, note=_ACCEL),
    _k("dynamo_backend", None, note=_ACCEL + "; sd-scripts reads it only with --torch_compile, which the LoRA "
                                             "tab does not set", quiet=("no",)),
    _k("dynamo_mode", None, note=_ACCEL, quiet=("default",)),
    _k("dynamo_use_fullgraph", None, note=_ACCEL),
    _k("dynamo_use_dynamic", None, note=_ACCEL),
    _k("extra_accelerate_launch_args", None, note=_ACCEL),
    # advanced training
    _k("gradient_checkpointing", "gradient_checkpointing", FLAG),
    _k("fp8_base", "fp8_base", FLAG),
    _k("fp8_base_unet", "fp8_base_unet", FLAG, when=_flux),
    _k("full_fp16", "full_fp16", FLAG),
    _k("highvram", "highvram", FLAG),
    _k("lowvram", None, note="not passed by the GUI (sd-scripts has no --lowvram)"),
    _k("xformers", "xformers", _xformers),
    _k("shuffle_caption", "shuffle_caption", FLAG),
    _k("save_state", "save_state", FLAG),
    _k("save_state_on_train_end", "save_state_on_train_end", FLAG),
    _k("resume", "resume"),
    _k("prior_loss_weight", "prior_loss_weight", FLOAT),
    _k("color_aug", "color_aug", FLAG),
    _k("flip_aug", "flip_aug", FLAG),
    _k("masked_loss", "masked_loss", FLAG),
    _k("clip_skip", "clip_skip", _clip_skip),
    _k("gradient_accumulation_steps", "gradient_accumulation_steps", INT),
    _k("mem_eff_attn", "mem_eff_attn", FLAG),
    _k("max_token_length", "max_token_length", _max_token_length, when=_not_flux),
    _k("max_data_loader_n_workers", "max_data_loader_n_workers", ALWAYS_INT),
    _k("keep_tokens", "keep_tokens", INT),
    _k("persistent_data_loader_workers", "persistent_data_loader_workers", FLAG),
    _k("bucket_no_upscale", "bucket_no_upscale", FLAG),
    _k("random_crop", "random_crop", FLAG),
    _k("bucket_reso_steps", "bucket_reso_steps", INT),
    _k("v_pred_like_loss", "v_pred_like_loss", FLOAT),
    _k("caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", INT),
    _k("caption_dropout_rate", "caption_dropout_rate", FLOAT),
    _k("noise_offset_type", None),  # chooses the noise keys passed
    _k("noise_offset", "noise_offset", FLOAT, when=_original),
    _k("noise_offset_random_strength", "noise_offset_random_strength", FLAG, when=_original),
    _k("adaptive_noise_scale", "adaptive_noise_scale", FLOAT, when=_original),
    _k("multires_noise_iterations", "multires_noise_iterations", INT, when=_multires),
    _k("multires_noise_discount", "multires_noise_discount", FLOAT, when=_multires),
    _k("ip_noise_gamma", "ip_noise_gamma", FLOAT),
    _k("ip_noise_gamma_random_strength", "ip_noise_gamma_random_strength", FLAG),
    _k("additional_parameters", None),  # appended to the command line
    _k("loss_type", "loss_type"),
    _k("huber_schedule", "huber_schedule"),
    _k("huber_c", "huber_c", FLOAT),
    _k("huber_scale", "huber_scale", FLOAT),
    _k("vae_batch_size", "vae_batch_size", INT),
    _k("min_snr_gamma", "min_snr_gamma", FLOAT),
    _k("save_every_n_steps", "save_every_n_steps", INT),
    _k("save_last_n_steps", "save_last_n_steps", INT),
    _k("save_last_n_steps_state", "save_last_n_steps_state", INT),
    _k("save_last_n_epochs", "save_last_n_epochs", INT),
    _k("save_last_n_epochs_state", "save_last_n_epochs_state", INT),
    _k("skip_cache_check", "skip_cache_check", FLAG),
    _k("log_with", "log_with"),
    _k("wandb_api_key", "wandb_api_key"),
    _k("wandb_run_name", "wandb_run_name"),
    _k("log_tracker_name", "log_tracker_name"),
    _k("log_tracker_config", "log_tracker_config"),
    _k("log_config", "log_config", FLAG),
    _k("scale_v_pred_loss_like_noise_pred", "scale_v_pred_loss_like_noise_pred", FLAG),
    _k("full_bf16", "full_bf16", FLAG),
    _k("min_timestep", "min_timestep", INT),
    _k("max_timestep", "max_timestep", INT),
    _k("vae", "vae"),
    _k("weighted_captions", "weighted_captions", FLAG),
    _k("debiased_estimation_loss", "debiased_estimation_loss", FLAG),
    # SDXL
    _k("sdxl_cache_text_encoder_outputs", "cache_text_encoder_outputs", FLAG, when=_sdxl),
    _k("sdxl_no_half_vae", "no_half_vae", FLAG, when=_sdxl),
    # LoRA
    _k("text_encoder_lr", "text_encoder_lr", _learning_rates, always=True),
    _k("t5xxl_lr", None),  # read with text_encoder_lr
    _k("unet_lr", None),  # read with text_encoder_lr
    _k("network_dim", "network_dim", INT),
    _k("network_weights", "network_weights"),
    _k("dim_from_weights", "dim_from_weights", FLAG),
    _k("network_alpha", "network_alpha", FLOAT),
    _k("LoRA_type", "network_module", _network, always=True),
    _k("sample_every_n_steps", "sample_every_n_steps", INT),
    _k("sample_every_n_epochs", "sample_every_n_epochs", INT),
    _k("sample_sampler", "sample_sampler"),
    _k("sample_prompts", "sample_prompts", _sample_prompts),
    _k("scale_weight_norms", "scale_weight_norms", FLOAT),
    _k("network_dropout", "network_dropout", FLOAT),
    # Hugging Face
    _k("huggingface_repo_id", "huggingface_repo_id"),
    _k("huggingface_token", "huggingface_token"),
    _k("huggingface_repo_type", "huggingface_repo_type"),
    _k("huggingface_repo_visibility", "huggingface_repo_visibility"),
    _k("huggingface_path_in_repo", "huggingface_path_in_repo"),
    _k("save_state_to_huggingface", "save_state_to_huggingface", FLAG),
    _k("resume_from_huggingface", "resume_from_huggingface", FLAG),
    _k("async_upload", "async_upload", FLAG),
    # metadata
    *(_k(f"metadata_{n}", f"metadata_{n}") for n in ("author", "description", "license", "tags", "title")),
    # FLUX.1
    _k("flux1_cache_text_encoder_outputs", "cache_text_encoder_outputs", FLAG, when=_flux),
    _k("flux1_cache_text_encoder_outputs_to_disk", "cache_text_encoder_outputs_to_disk", FLAG, when=_flux),
    _k("model_type", "model_type", _model_type, when=_flux),
    _k("ae", "ae", when=_flux),
    _k("clip_l", "clip_l", _clip_l, when=_flux),
    _k("t5xxl", "t5xxl", when=_flux),
    _k("discrete_flow_shift", "discrete_flow_shift", FLOAT, when=_flux),
    _k("model_prediction_type", "model_prediction_type", when=_flux),
    _k("timestep_sampling", "timestep_sampling", when=_flux),
    _k("split_mode", "split_mode", FLAG, when=_flux),
    _k("t5xxl_max_token_length", "t5xxl_max_token_length", INT, when=_flux),
    _k("guidance_scale", "guidance_scale", _guidance_scale, when=_flux),
    _k("mem_eff_save", None, when=_flux, note=_NOT_SD + " (flux_train.py's, not flux_train_network.py's)"),
    _k("apply_t5_attn_mask", "apply_t5_attn_mask", _apply_t5_attn_mask, when=_flux),
    _k("cpu_offload_checkpointing", "cpu_offload_checkpointing", FLAG, when=_flux),
    _k("blocks_to_swap", "blocks_to_swap", INT, when=_dit),
    _k("single_blocks_to_swap", None, when=_flux, note=_NOT_SD + " (deprecated: blocks_to_swap)"),
    _k("double_blocks_to_swap", None, when=_flux, note=_NOT_SD + " (deprecated: blocks_to_swap)"),
    _k("show_timesteps", "show_timesteps", STR, when=_dit),
    _k("show_timesteps_resolution", "show_timesteps_resolution", INT,
       when=lambda c: _dit(c) and bool(c.get("show_timesteps"))),
    # SD3
    _k("sd3_cache_text_encoder_outputs", "cache_text_encoder_outputs", FLAG, when=_sd3),
    _k("sd3_cache_text_encoder_outputs_to_disk", "cache_text_encoder_outputs_to_disk", FLAG, when=_sd3),
    _k("sd3_fused_backward_pass", "fused_backward_pass", FLAG, when=_sd3),
    _k("clip_g", "clip_g", when=_sd3),
    _k("clip_g_dropout_rate", "clip_g_dropout_rate", FLOAT, when=_sd3),
    _k("sd3_clip_l", "clip_l", when=_sd3),
    _k("sd3_clip_l_dropout_rate", "clip_l_dropout_rate", FLOAT, when=_sd3),
    _k("sd3_disable_mmap_load_safetensors", "disable_mmap_load_safetensors", FLAG, when=_sd3),
    _k("sd3_enable_scaled_pos_embed", "enable_scaled_pos_embed", FLAG, when=_sd3),
    _k("logit_mean", "logit_mean", FLOAT, when=_sd3),
    _k("logit_std", "logit_std", FLOAT, when=_sd3),
    _k("mode_scale", "mode_scale", FLOAT, when=_sd3),
    _k("pos_emb_random_crop_rate", "pos_emb_random_crop_rate", FLOAT, when=_sd3),
    _k("save_clip", "save_clip", FLAG, when=_sd3),
    _k("save_t5xxl", "save_t5xxl", FLAG, when=_sd3),
    _k("sd3_t5_dropout_rate", "t5_dropout_rate", FLOAT, when=_sd3),
    _k("sd3_t5xxl", "t5xxl", when=_sd3),
    _k("t5xxl_device", "t5xxl_device", when=_sd3),
    _k("t5xxl_dtype", "t5xxl_dtype", when=_sd3),
    _k("sd3_text_encoder_batch_size", "text_encoder_batch_size", INT, when=_sd3),
    _k("weighting_scheme", "weighting_scheme", when=_sd3),
    # UI state saved with the file
    _k("save_as_bool", None, note=_UI, quiet=(True, False)),
    _k("training_preset", None, note=_UI, quiet=("none",)),
    # network_args parts (read by LoRA_type; one it does not use gives a note when set)
    *(_k(key, None) for key in NETWORK_KEYS),
)
BY_GUI_KEY: dict[str, Key] = {k.gui: k for k in TABLE}
# the families with their own sd-scripts scripts that LoRA Loop's command does not take: checkbox, key prefix
# and LoRA type
OTHER_FAMILIES = (("hunyuan_image_checkbox", "hunyuan_", "HunyuanImage-2.1 (hunyuan_image_train_network.py)",
                   "HunyuanImage-2.1"),
                  ("anima_checkbox", "anima_", "Anima (anima_train_network.py)", "Anima"),
                  ("lumina_checkbox", "lumina_", "Lumina Image 2.0 (lumina_train_network.py)", "Lumina"))
# keys the GUI writes for every training whose presence marks a GUI JSON
_MARKERS = ("LoRA_type", "max_resolution", "epoch", "optimizer", "lr_warmup", "model_list", "save_as_bool",
            "additional_parameters", "sdxl", "xformers", "noise_offset_type", "save_model_as")


# ---------------------------------------------------------------------------------------------------- API
def looks_like_gui_json(data: Any) -> bool:
    """Whether ``data`` (a parsed JSON document) is a kohya_ss GUI training config: a dict with the GUI's own keys
    (``LoRA_type``, or several of ``max_resolution``, ``epoch``, ``optimizer``, ``lr_warmup``, ...) and none of the
    textual-inversion tab's."""
    if not isinstance(data, dict) or "num_vectors_per_token" in data or "token_string" in data:
        return False
    return "LoRA_type" in data or sum(key in data for key in _MARKERS) >= 3


def _update(data: dict[str, Any]) -> dict[str, Any]:
    """What the GUI's update_my_data does to a file it opens (the renames of older versions)."""
    d = dict(data)
    if "use_8bit_adam" in d:
        use_8bit_adam = d.pop("use_8bit_adam")
        d.setdefault("optimizer", "AdamW8bit" if _flag(use_8bit_adam) else "AdamW")
    if d.get("lora_network_weights") is not None:
        d["network_weights"] = d.pop("lora_network_weights")
    if _flag(d.pop("use_wandb", False)):
        d["log_with"] = "wandb"
    if d.get("LoRA_type") == "LoCon":
        d["LoRA_type"] = "LyCORIS/LoCon"
    if d.get("save_model_as") not in (None, "safetensors", "ckpt"):
        d["save_model_as"] = "safetensors"
    return d


def _additional(text: Any, notes: list[str]) -> list[str]:
    if not text or not str(text).strip():
        return []
    try:
        return shlex.split(str(text))
    except ValueError as e:  # unbalanced quotes: the GUI's own splitting
        notes.append(f"additional_parameters: {e}; split on whitespace without the double quotes (as the GUI)")
        return str(text).replace('"', "").split()


def _argv_item(name: str, value: Any) -> list[str]:
    if value is True:
        return [f"--{name}"]
    if isinstance(value, (list, tuple)):
        return [f"--{name}", *(_fmt(v) for v in value)]
    return [f"--{name}={_fmt(value)}"]


def gui_json_to_args(data: dict, *, prompt_file: str | None = None) -> tuple[list[str], list[str]]:
    """(sd-scripts argv, notes) for a kohya_ss GUI LoRA JSON (see the module doc for the conventions).

    The arguments come sorted by name (as in the TOML the GUI writes), then ``additional_parameters``. The notes
    say what was left out and why. ``sample_prompts`` text is written to ``prompt_file`` (default
    ``<output_dir>/sample/prompt.txt``, the GUI's) when it is not empty. :class:`GuiJsonError`: a JSON the GUI
    would refuse to train, or one for a script LoRA Loop's command does not take."""
    if not isinstance(data, dict):
        raise GuiJsonError("a kohya_ss GUI config is a JSON object")
    d = _update(data)
    notes: list[str] = []
    ctx = _Ctx(d, notes, prompt_file, set())

    lora_type = d.get("LoRA_type") or "Standard"
    for checkbox, _, what, family_type in OTHER_FAMILIES:
        if _flag(d.get(checkbox)) or lora_type == family_type:
            raise GuiJsonError(f"{checkbox if _flag(d.get(checkbox)) else 'LoRA_type ' + repr(lora_type)}: the GUI "
                               f"trains {what}; LoRA Loop's command takes the arguments of train_network.py, "
                               f"sdxl_, flux_ and sd3_train_network.py")
    if ctx.flux and lora_type not in ("Flux1", "Flux1 OFT") and "LyCORIS" not in lora_type:
        raise GuiJsonError(f"flux1_checkbox with LoRA_type {lora_type!r}: the GUI refuses this (Flux1, Flux1 OFT "
                           f"or a LyCORIS type)")
    if lora_type in ("Kohya LoHa", "Kohya LoKr") and not ctx.sdxl:
        raise GuiJsonError(f"LoRA_type {lora_type!r} needs the SDXL checkbox (the GUI refuses it otherwise)")

    args: dict[str, Any] = {}
    for key in TABLE:
        if (key.gui not in d and not key.always) or (key.when is not None and not key.when(ctx)):
            continue
        value = d.get(key.gui)
        if key.transform is None:  # no sd-scripts argument
            if key.note and not _unset(value) and not any(value == q and type(value) is type(q)
                                                          for q in key.quiet):
                notes.append(f"{key.gui} = {value!r}: {key.note}")
            continue
        out = key.transform(value, ctx)
        for name, v in (out.items() if isinstance(out, dict) else [(key.arg, out)]):
            if not _unset(v):
                args[name] = v
    for key, default in NETWORK_KEYS.items():
        value = d.get(key)
        if key in _NUMERIC_NETWORK_KEYS and _number(value) is not None:
            value = _number(value)
        if key in d and key not in ctx.network_used and not _unset(value) and value != default:
            notes.append(f"{key} = {d[key]!r}: not used by LoRA_type {lora_type!r} (the GUI leaves it out)")
    for key, value in d.items():
        if key in BY_GUI_KEY or _unset(value) or key.startswith(tuple(f[1] for f in OTHER_FAMILIES)):
            continue  # known, unset, or the panel of a family that is off
        notes.append(f"{key} = {value!r}: not a key of this kohya_ss version's LoRA tab; ignored (as the GUI does)")

    argv = [item for name in sorted(args) for item in _argv_item(name, args[name])]
    return argv + _additional(d.get("additional_parameters"), notes), notes

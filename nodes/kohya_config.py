"""Load kohya Config node: an sd-scripts training config (the ``--config_file`` TOML) or the JSON the kohya_ss GUI
saves -> the settings nodes' outputs, with sd-scripts' meaning (the argument table of ``headless/kohya_cli``).

What a settings socket cannot carry is reported, not guessed: values for Inject LoRA, Bucket Images, Load Dataset
and Save LoRA ("set on <node>: ..."), paths and output folders ("taken from the graph"), and the keys LoRA Loop
does not implement (one warning). Train LoRA's own widgets (steps, learning rate, optimizer, schedule, seed) are
overridden by the values the file gives, through the Optimizer Settings output; the report says which."""
from __future__ import annotations

import json
import logging
import os

from ..trainer.config import TrainConfig
from ._api import CATEGORY, io
from .schema import values_of
from .settings import BY_NAME, Settings

log = logging.getLogger(__name__)

TITLE = "Load kohya Config (LoRA Loop)"
OUTPUT_TOPICS = ("optimizer", "noise_loss", "checkpoints", "captions")
LATER_TOPICS = ("network_training", "network_options", "validation")  # after the report: saved workflows keep slots
MAIN_FIELDS = ("max_train_steps", "learning_rate", "optimizer_type", "lr_scheduler", "seed")
# sd-scripts arguments that set each of Train LoRA's own widgets
MAIN_GIVEN = {"max_train_steps": ("max_train_steps",), "learning_rate": ("learning_rate", "unet_lr"),
              "optimizer_type": ("optimizer_type", "use_8bit_adam", "use_lion_optimizer"),
              "lr_scheduler": ("lr_scheduler",), "seed": ("seed",)}
REPORTED_NODES = {"LoraLoop_TrainLoRA": "Train LoRA", "LoraLoop_InjectLoRA": "Inject LoRA", "LoraLoop_BucketImages": "Bucket Images",
                  "LoraLoop_LoadDataset": "Load Dataset", "LoraLoop_EncodeDataset": "Encode Dataset",
                  "LoraLoop_SaveLoRA": "Save LoRA"}
OVERRIDDEN_WIDGETS = ("steps", "learning_rate", "optimizer", "lr_scheduler", "seed")
# what parse() needs but the graph provides (the MODEL, the dataset, the output folder)
PLACEHOLDERS = {"pretrained_model_name_or_path": "graph-model.safetensors", "output_dir": "graph-output"}


def resolve_config_path(path: str) -> str:
    import folder_paths

    path = (path or "").strip().strip('"')
    if not path:
        raise ValueError(f"{TITLE}: 'path' is empty: give an sd-scripts training config (.toml) or a kohya_ss GUI "
                         "config (.json), inside ComfyUI's input folder or as an absolute path")
    full = os.path.expanduser(path) if os.path.isabs(os.path.expanduser(path)) else \
        os.path.abspath(os.path.join(folder_paths.get_input_directory(), path))
    if not os.path.isfile(full):
        raise ValueError(f"{TITLE}: {full} does not exist (relative paths are resolved inside ComfyUI's input "
                         f"folder, {folder_paths.get_input_directory()})")
    return full


def _argv_of(path: str) -> tuple[list[str], list[str]]:
    """(sd-scripts argv, notes) for the file: a TOML as ``--config_file``, a kohya_ss GUI JSON converted."""
    from ..headless.kohya_cli import CliError

    if path.lower().endswith(".json"):
        import folder_paths

        from ..headless.kohya_gui_json import GuiJsonError, gui_json_to_args

        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise CliError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict):
            raise CliError(f"{path}: a kohya_ss config is a JSON object of settings, got {type(data).__name__}")
        try:  # its sample prompts (which previews would need a VAE for) go to ComfyUI's temp folder, not output_dir
            return gui_json_to_args(data, prompt_file=os.path.join(folder_paths.get_temp_directory(),
                                                                   "lora_loop_kohya_gui_prompts.txt"))
        except GuiJsonError as e:
            raise CliError(f"{path}: {e}") from None
    return ["--config_file", path], []


def load(path: str):
    """(Parsed run, notes, the sd-scripts names the file sets) of a config file; CliError names the key and line."""
    from ..headless import kohya_cli

    argv, notes = _argv_of(path)
    names = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    if path.lower().endswith((".toml", ".tml")) or not path.lower().endswith(".json"):
        known, _unknown, _ = kohya_cli.read_config_file(path)
        names |= set(known)
    extra = [f"--{k}={v}" for k, v in PLACEHOLDERS.items() if k not in names]
    if not names & {"train_data_dir", "dataset_config"}:
        extra += ["--train_data_dir=graph-dataset", "--resolution=512"]
    parsed = kohya_cli.parse(argv + extra, strict=False)
    return parsed, notes, frozenset(names - {"config_file"})


def settings_of(parsed, given) -> tuple[dict[str, Settings], list[str]]:
    """The Settings for each output topic, and the report lines about Train LoRA's overridden widgets."""
    out: dict[str, Settings] = {}
    lines: list[str] = []
    for name in OUTPUT_TOPICS + LATER_TOPICS:
        topic = BY_NAME[name]
        inputs = parsed.inputs.get(topic.node_id)
        values: dict = {}
        for cfg, fields in topic.fields:
            values.update(values_of(cfg, fields, inputs or {}))
        out[name] = Settings(name, values)
    main = values_of(TrainConfig, MAIN_FIELDS, parsed.inputs.get("LoraLoop_TrainLoRA", {}))
    override = {k: v for k, v in main.items() if any(g in given for g in MAIN_GIVEN[k])}
    if override:
        out["optimizer"] = Settings("optimizer", {**out["optimizer"].values, **override})
        lines.append("overrides Train LoRA's " + ", ".join(f"{k}={v}" for k, v in override.items()))
    return out, lines


def report(parsed, given, notes: list[str]) -> list[str]:
    """What the file sets that no settings socket carries, and what is left out."""
    from ..headless.kohya_cli import BY_NAME as ARGS

    lines = []
    by_node: dict[str, list[str]] = {}
    graph = []
    for name in sorted(given):
        o = ARGS.get(name)
        if o is None:
            continue
        if o.kind == "graph":
            graph.append(name)
            continue
        node = (o.target or "").split(".")[0]
        if node in REPORTED_NODES:
            key = o.target.split(".", 1)[1].split(" ")[0].rstrip(",")
            if node == "LoraLoop_TrainLoRA" and key in OVERRIDDEN_WIDGETS:
                continue  # carried by the Optimizer Settings output
            value = parsed.inputs.get(node, {}).get(key, getattr(parsed.namespace, name, None))
            by_node.setdefault(REPORTED_NODES[node], []).append(f"{key}={value}")
    for node, items in by_node.items():
        lines.append(f"set on {node} by hand: " + ", ".join(dict.fromkeys(items)))
    if graph:
        lines.append("taken from the graph: " + ", ".join(graph))
    if parsed.skipped:
        lines.append("not supported, left out: " + ", ".join(parsed.skipped))
    return lines + notes


class LoadKohyaConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        sockets = [BY_NAME[t] for t in OUTPUT_TOPICS]
        return io.Schema(
            node_id="LoraLoop_LoadKohyaConfig",
            display_name=TITLE,
            category=f"{CATEGORY}/settings",
            is_experimental=True,
            description="Read an sd-scripts training config (.toml, as for --config_file) or a kohya_ss GUI config "
                        "(.json) into the settings nodes' outputs, with sd-scripts' meaning and defaults. Its report "
                        "lists what to set by hand (Inject LoRA, Bucket Images, ...), what comes from the graph "
                        "(model and output paths) and what is not supported.",
            inputs=[io.String.Input("path", default="my_config.toml",
                                    tooltip="An sd-scripts training config .toml or a kohya_ss GUI .json, inside "
                                            "ComfyUI's input folder or an absolute path.")],
            outputs=[t.socket.Output(display_name=t.input_name,
                                     tooltip=f"Connect to {t.receiver}'s {t.input_name} input"
                                             + (" (it also sets Train LoRA's steps, learning rate, optimizer, "
                                                "schedule and seed when the file gives them)."
                                                if t.name == "optimizer" else "."))
                     for t in sockets]
            + [io.String.Output(display_name="report",
                                tooltip="What the file set, what to set by hand on other nodes, what comes from the "
                                        "graph and what is not supported.")]
            + [BY_NAME[t].socket.Output(display_name=BY_NAME[t].input_name,
                                        tooltip=f"Connect to {BY_NAME[t].receiver}'s {BY_NAME[t].input_name} input.")
               for t in LATER_TOPICS],
        )

    @classmethod
    def fingerprint_inputs(cls, path):
        try:
            full = resolve_config_path(path)
            st = os.stat(full)
            return f"{full}:{st.st_size}:{st.st_mtime_ns}"
        except Exception:
            return path

    @classmethod
    def execute(cls, path) -> io.NodeOutput:
        from ..headless.kohya_cli import CliError

        full = resolve_config_path(path)
        try:
            parsed, notes, given = load(full)
        except CliError as e:
            raise ValueError(f"{TITLE}: {e}") from None
        settings, lines = settings_of(parsed, given)
        lines = [f"{os.path.basename(full)}: {len(given)} keys"] + lines + report(parsed, given, notes)
        if parsed.skipped:
            log.warning("%s: %s: not supported, left out: %s", TITLE, full, ", ".join(parsed.skipped))
        text = "\n".join(lines)
        log.info("%s: %s", TITLE, text.replace("\n", "; "))
        return io.NodeOutput(*(settings[t] for t in OUTPUT_TOPICS), text, *(settings[t] for t in LATER_TOPICS),
                             ui={"text": [text]})

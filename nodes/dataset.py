"""Dataset nodes: Load Dataset -> Bucket Images -> Encode Dataset."""
from __future__ import annotations

import logging
import os

from ..trainer.captions import CaptionOptions
from ..trainer.dataset import GroupConfig, LoraDataset, SubsetConfig
from ..trainer.encoded import EncodeConfig
from . import legacy
from ._api import CATEGORY, LoraDataset as LoraDatasetIO, io
from .progress import show_text
from .schema import values_of, widget
from .settings import BY_NAME, receiver_input

log = logging.getLogger(__name__)
GROUP_WIDGETS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                 "bucket_no_upscale")


def resolve_dataset_path(path: str) -> str:
    """Absolute paths are used as they are; relative ones are taken inside ComfyUI's input folder."""
    import folder_paths

    path = (path or "").strip().strip('"')
    if not path:
        raise ValueError("Load Dataset: 'path' is empty. Give a folder inside ComfyUI's input folder (e.g. "
                         "'my_dataset'), an absolute folder path, or a kohya dataset .toml file.")
    if os.path.isabs(os.path.expanduser(path)):
        full = os.path.expanduser(path)
    else:
        base = folder_paths.get_input_directory()
        full = os.path.abspath(os.path.join(base, path))
    if not os.path.exists(full):
        raise ValueError(f"Load Dataset: {full} does not exist. Relative paths are resolved inside ComfyUI's input "
                         f"folder ({folder_paths.get_input_directory()}); use an absolute path otherwise.")
    return full


def _listing_fingerprint(path: str) -> str:
    """Names, sizes and mtimes under the dataset (two levels deep, plus a TOML's image_dirs)."""
    import hashlib

    from ..trainer.dataset import read_dataset_toml

    h = hashlib.sha256()
    roots = [path]
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
        try:
            roots += [s.image_dir for s in read_dataset_toml(path).subsets]
        except ValueError:  # reported when the node runs
            pass
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            depth = dirpath[len(root):].count(os.sep)
            if depth >= 1:
                dirnames[:] = []
            for name in sorted(filenames):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class LoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_LoadDataset",
            display_name="Load Dataset (LoRA Loop)",
            category=f"{CATEGORY}/dataset",
            description="Read a folder of images with caption files (kohya N_name repeat folders work) or a kohya "
                        "dataset TOML. Caption processing and augmentation come from an optional Captions & "
                        "Augmentation node.",
            is_experimental=True,
            inputs=[
                io.String.Input("path", default="my_dataset",
                                tooltip="A folder inside ComfyUI's input folder, an absolute folder, or a kohya dataset "
                                        ".toml. The folder may hold images directly and/or kohya '<repeats>_<class "
                                        "tokens>' subfolders (e.g. '10_sks dog')."),
                widget(SubsetConfig, "caption_extension",
                       extra_tooltip="For a TOML it is the fallback when no level sets it."),
                widget(SubsetConfig, "num_repeats", extra_tooltip="Folders named '<N>_<tokens>' use N instead."),
                widget(SubsetConfig, "class_tokens", extra_tooltip="Folders named '<N>_<tokens>' use their tokens."),
                widget(SubsetConfig, "alpha_mask", optional=True,
                       extra_tooltip="For a TOML it is the fallback when no level sets it."),
                widget(SubsetConfig, "conditioning_data_dir", optional=True,
                       extra_tooltip="A folder inside ComfyUI's input folder, or absolute; for a folder dataset (all "
                                     "its subfolders), a TOML sets it per subset. Empty = no masks."),
                receiver_input(BY_NAME["captions"]),
            ],
            outputs=[LoraDatasetIO.Output(display_name="dataset",
                                          tooltip="The images and captions (LORA_DATASET); unreadable files are "
                                                  "listed in the console and skipped.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, path, **kwargs):
        try:
            return _listing_fingerprint(resolve_dataset_path(path))
        except Exception:
            return ""

    @classmethod
    def execute(cls, path, caption_extension, num_repeats, class_tokens, caption_settings=None, alpha_mask=False,
                conditioning_data_dir="") -> io.NodeOutput:
        from ..trainer.dataset import load_folder, load_toml

        uid = cls.hidden.unique_id
        legacy.check("LoraLoop_LoadDataset", "Load Dataset (LoRA Loop)", uid, cls.hidden.prompt,
                     cls.hidden.extra_pnginfo, {"caption_settings": caption_settings is not None})
        if caption_settings is not None and getattr(caption_settings, "topic", None) != "captions":
            raise TypeError(f"Load Dataset: 'caption_settings' needs a Captions & Augmentation node, got "
                            f"{caption_settings!r}")
        values = dict(caption_settings.values) if caption_settings is not None else {}
        flip_aug = bool(values.pop("flip_aug", False))
        augment = {k: bool(values.pop(k, False)) for k in ("color_aug", "random_crop")}
        caption = CaptionOptions(**values)
        full = resolve_dataset_path(path)
        if os.path.isfile(full):
            if not full.lower().endswith(".toml"):
                raise ValueError(f"Load Dataset: {full} is a file but not a .toml dataset config")
            if (conditioning_data_dir or "").strip():
                raise ValueError("Load Dataset: conditioning_data_dir is for a folder dataset; in a dataset TOML set "
                                 "conditioning_data_dir in each [[datasets.subsets]] that has masks")
            defaults = {"caption_extension": caption_extension, "num_repeats": num_repeats,
                        "class_tokens": class_tokens or None, "flip_aug": flip_aug, "alpha_mask": bool(alpha_mask),
                        **augment, **values}
            ds = load_toml(full, defaults=defaults)
        else:
            masks = resolve_dataset_path(conditioning_data_dir) if (conditioning_data_dir or "").strip() else None
            ds = load_folder(full, caption_extension=caption_extension, num_repeats=num_repeats,
                             class_tokens=class_tokens or None, caption=caption, flip_aug=flip_aug,
                             alpha_mask=bool(alpha_mask), conditioning_data_dir=masks, **augment)
        for p, why in ds.skipped:
            log.warning("Load Dataset: skipped %s: %s", p, why)
        summary = (f"{len(ds.images)} images in {len(ds.subsets)} folder(s), {len(ds.skipped)} skipped"
                   + (f", {ds.uncaptioned} without a caption (empty caption)" if ds.uncaptioned else ""))
        log.info("Load Dataset: %s, from %s", summary, full)
        show_text(uid, summary)
        return io.NodeOutput(ds)


class BucketImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_BucketImages",
            display_name="Bucket Images (LoRA Loop)",
            category=f"{CATEGORY}/dataset",
            description="Assign every image to a kohya aspect-ratio bucket (same bucket list and assignment as "
                        "sd-scripts). Values set in a dataset TOML win over these inputs (kohya precedence).",
            is_experimental=True,
            inputs=[
                LoraDatasetIO.Input("dataset", tooltip="The dataset from Load Dataset."),
            ] + [widget(GroupConfig, n) for n in GROUP_WIDGETS],
            outputs=[LoraDatasetIO.Output(display_name="dataset",
                                          tooltip="The dataset with its bucket plan (LORA_DATASET).")],
        )

    @classmethod
    def execute(cls, dataset, **group) -> io.NodeOutput:
        from ..trainer.buckets import plan_buckets

        if not isinstance(dataset, LoraDataset):
            raise TypeError("Bucket Images needs the dataset from Load Dataset")
        ds = dataset.with_node_group_settings(values_of(GroupConfig, GROUP_WIDGETS, group))
        plan = plan_buckets(ds)
        ds.plan = plan
        info = plan.bucket_info()
        for i, b in (info or {"buckets": {}})["buckets"].items():
            log.info("bucket %s: %sx%s, %d images", i, b["resolution"][0], b["resolution"][1], b["count"])
        return io.NodeOutput(ds)


class EncodeDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoraLoop_EncodeDataset",
            display_name="Encode Dataset (LoRA Loop)",
            category=f"{CATEGORY}/dataset",
            description="Encode every bucketed image with the VAE (cached in memory and on disk) and every caption "
                        "with the CLIP (cached when captions do not change between epochs).",
            is_experimental=True,
            inputs=[
                LoraDatasetIO.Input("dataset", tooltip="The dataset from Bucket Images (or Load Dataset: then default "
                                                       "bucket settings are used)."),
                io.Vae.Input("vae", tooltip="The VAE of the checkpoint you train on."),
                io.Clip.Input("clip", optional=True,
                              tooltip="CLIP of the checkpoint. When given, captions are encoded once here; leave it "
                                      "unconnected if the text encoder is trained (Train LoRA encodes then)."),
                widget(EncodeConfig, "cache_latents_to_disk"),
                widget(EncodeConfig, "vae_batch_size"),
                widget(EncodeConfig, "max_token_length", optional=True),
                widget(EncodeConfig, "augment_variants", optional=True),
            ],
            outputs=[LoraDatasetIO.Output(display_name="dataset",
                                          tooltip="The encoded dataset for Train LoRA.")],
        )

    @classmethod
    def execute(cls, dataset, vae, clip=None, cache_latents_to_disk=True, vae_batch_size=4,
                max_token_length=0, augment_variants=8) -> io.NodeOutput:
        import comfy.utils
        import folder_paths

        from ..trainer import adapter as ca
        from ..trainer.buckets import plan_buckets
        from ..trainer.encoded import encode_dataset

        if not isinstance(dataset, LoraDataset):
            raise TypeError("Encode Dataset needs the dataset from Load Dataset / Bucket Images")
        cfg = EncodeConfig(cache_latents_to_disk=cache_latents_to_disk, vae_batch_size=vae_batch_size,
                           max_token_length=max_token_length, augment_variants=augment_variants)
        plan = getattr(dataset, "plan", None) or plan_buckets(dataset)
        cache_dir = os.path.join(folder_paths.get_output_directory(), "lora_loop_cache", "latents") \
            if cache_latents_to_disk else None
        pbar = comfy.utils.ProgressBar(max(1, len(dataset.images)))
        enc = encode_dataset(dataset, plan, vae_id=ca.vae_fingerprint(vae),
                             encode_pixels=lambda px: ca.encode_latents(vae, px), cache_dir=cache_dir,
                             batch_size=cfg.vae_batch_size, progress=lambda d, t: pbar.update_absolute(d, t),
                             augment_variants=cfg.augment_variants)
        enc.max_token_length = cfg.max_token_length
        log.info("Encode Dataset: %d latents + %d augmented versions (%d encoded, %d from memory, %d from disk)",
                 len(enc.latents), sum(len(v) for v in enc.variants.values()), enc.stats["encoded"],
                 enc.stats["memory_hits"], enc.stats["disk_hits"])
        if clip is not None and enc.deterministic_captions():
            import random

            from ..trainer.captions import process_caption

            captions = sorted({process_caption(rec.caption, dataset.subsets[rec.subset_index].caption,
                                               random.Random(0), 1) for rec in dataset.images})
            enc.text_conds = {c: ca.encode_caption(clip, c, cfg.max_token_length) for c in captions}
            enc.clip_id = ca.clip_fingerprint(clip)
        return io.NodeOutput(enc)

"""The shipped example workflows: UI file in example_workflows/, API twin in tests/workflows/.

Each entry also holds its template card (``card``: the thumbnail's title and lines, drawn by
tests/support/make_thumbnails.py with Train LoRA after a real tiny run), the template's layout (``id: (x, y)`` or ``(x, y, width, height)``), the note shown in it
(a frontend Markdown note: what the template does, what to change for a quick CPU test, what a GPU run takes)
and the view it opens with (scale, offset). ``python tests/support/workflow_convert.py`` writes the UI files
from these; the layout keeps Train LoRA, its chart and the preview under it on a 1366x768 screen."""

CPU_STEP = ("a full-size SD1.5 step at 256 px took 3.8 s on an idle 2-core CPU in LoRA Loop's benchmark "
            "(benchmarks/RESULTS.md)")

# columns of the SD templates: notes and loaders | dataset and network | Train LoRA | save and prompts | sampler
SD_LAYOUT = {"1": (20, 380), "2": (20, 520), "3": (20, 700), "4": (370, 40), "5": (370, 200),
             "6": (720, 40, 420, 620), "7": (1180, 40, 320, 300), "8": (1180, 390), "9": (1180, 600),
             "10": (1180, 810), "11": (1540, 40), "12": (1540, 360), "13": (1540, 480, 320, 300)}
VIEW = {"scale": 0.8, "offset": [70, 90]}  # clear of the side bar and the top bar

EXAMPLES = [
    {
        "ui": "Train then generate (SD1.5).json",
        "api": "train_then_generate_sd15.api.json",
        "card": {"title": "Train then generate", "model": "SD1.5", "family": "sd15",
                 "lines": ["your images + captions \u2192 a kohya LoRA", "saved, then sampled in the same run",
                           "CPU test: 256 px, 10 steps"]},
        "layout": SD_LAYOUT,
        "view": VIEW,
        "note": (
            "## Train then generate (SD1.5)\n"
            "Trains a LoRA on the images in **input/my_dataset** (each with a `.txt` caption of the same name) on "
            "an SD1.5 checkpoint, saves it as **models/loras/my_lora.safetensors**, and generates with it in the "
            "same run.\n\n"
            "**Change:** your checkpoint in *Load Checkpoint*, your folder in *Load Dataset*, the trigger words in "
            "the prompt.\n\n"
            "**Quick test on a CPU:** *Bucket Images* resolution 256, *Train LoRA* steps 10, *Empty Latent Image* "
            f"256 x 256, *KSampler* steps 4 (about a minute of training: {CPU_STEP}).\n\n"
            "**On a GPU:** 500 steps at 512 px take a few minutes (estimate from published SD1.5 LoRA speeds, "
            "about 2 min for 500 steps on an RTX 5090; not measured by LoRA Loop)."),
    },
    {
        "ui": "Train, watch, generate (SD1.5).json",
        "api": "train_watch_generate_sd15.api.json",
        "card": {"title": "Train, watch, generate", "model": "SD1.5", "family": "sd15",
                 "lines": ["live loss chart + preview images", "checkpoints, verify on save",
                           "CPU test: 256 px, 8 steps"]},
        "layout": {**SD_LAYOUT, "16": (370, 560), "17": (370, 740), "14": (1900, 40, 320, 340),
                   "15": (1900, 420)},
        "view": VIEW,
        "note": (
            "## Train, watch, generate (SD1.5)\n"
            "The SD1.5 run with everything to watch it: the live **loss chart** and the latest **preview** on "
            "*Train LoRA*, previews of two prompts every 100 steps (*Previews* node), a **checkpoint** every 250 "
            "steps keeping the last 2 (*Checkpoints & Resume*), *Save LoRA*'s **verify** (reloads the file "
            "through ComfyUI's LoRA loader and reports the difference) and core's *Plot Loss Graph*.\n\n"
            "**Change:** checkpoint, dataset folder, the preview prompts.\n\n"
            "**Quick test on a CPU:** resolution 256, steps 8; *Previews* steps 4, 256 x 256, every_n_steps 4; "
            "*Checkpoints* save_every_n_steps 4; *KSampler* steps 4. Previews cost as much as a few training "
            f"steps each ({CPU_STEP}).\n\n"
            "**On a GPU:** 1000 steps at 512 px with the previews take minutes (estimate from published SD1.5 "
            "speeds; not measured by LoRA Loop)."),
    },
    {
        "ui": "Train then generate (SDXL).json",
        "api": "train_then_generate_sdxl.api.json",
        "card": {"title": "Train then generate", "model": "SDXL", "family": "sdxl",
                 "lines": ["1024 px buckets, rank 16 / alpha 8", "gradient checkpointing on", "for a GPU"]},
        "layout": SD_LAYOUT,
        "view": VIEW,
        "note": (
            "## Train then generate (SDXL)\n"
            "An SDXL LoRA the way sd-scripts users train it: rank 16 / alpha 8, 1024 px aspect-ratio buckets "
            "(512-2048), gradient checkpointing on, per-sample size conditioning.\n\n"
            "**Change:** *Load Checkpoint* (sd_xl_base_1.0), *Load Dataset*, the prompt.\n\n"
            "**Quick test on a CPU:** not practical for real training; to check the graph, use resolution 512 "
            "and steps 2.\n\n"
            "**On a GPU:** SDXL LoRAs with gradient checkpointing are commonly trained on 16-24 GB cards, 1000 "
            "steps at 1024 px in tens of minutes (published figures of other trainers; LoRA Loop has not been "
            "measured on a GPU yet)."),
    },
    {
        "ui": "Train then generate (FLUX.1 dev).json",
        "api": "train_then_generate_flux.api.json",
        "card": {"title": "Train then generate", "model": "FLUX.1 dev", "family": "flux",
                 "lines": ["UNET + dual CLIP + VAE loaders", "FLUX timesteps, guidance 1.0",
                           "for a large GPU"]},
        "layout": {"1": (20, 380), "2": (20, 500), "3": (20, 660), "4": (370, 40), "5": (370, 200),
                   "6": (370, 440), "7": (370, 600), "17": (20, 780), "8": (720, 40, 420, 620),
                   "9": (1180, 40, 320, 300), "10": (1180, 390), "11": (1180, 600), "12": (1180, 720),
                   "13": (1180, 840), "14": (1540, 40), "15": (1540, 360), "16": (1540, 480, 320, 300)},
        "view": VIEW,
        "note": (
            "## Train then generate (FLUX.1 dev)\n"
            "A FLUX.1 dev LoRA (all 304 double and single block Linears, rank 16) from UNETLoader + DualCLIPLoader "
            "+ VAELoader. The *Noise & Loss* node sets FLUX's resolution-dependent timestep sampling and trains "
            "at guidance 1.0; sampling uses FluxGuidance 3.5 at cfg 1.\n\n"
            "**Change:** the three loaders' files, *Load Dataset*, the prompt.\n\n"
            "**Quick test on a CPU:** not practical with the full model.\n\n"
            "**On a GPU:** gradient checkpointing is not applied to FLUX blocks yet, so 1024 px needs a "
            "data-centre GPU (about 80 GB); 512 px and fp8 weights (UNETLoader weight_dtype fp8_e4m3fn) need "
            "much less. Published FLUX LoRA speeds are 1.2-3.5 s/step on an RTX 4090 (not measured by LoRA "
            "Loop), so 1000 steps take about an hour."),
    },
]

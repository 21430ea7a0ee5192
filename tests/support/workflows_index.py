"""The shipped example workflows: UI file in example_workflows/, API twin in tests/workflows/.

Each entry also holds its template card (``card``: the thumbnail's title and lines, drawn by
tests/support/make_thumbnails.py with Train LoRA after a real tiny run), the template's layout (``id: (x, y)`` or ``(x, y, width, height)``), the note shown in it
(a frontend Markdown note: what the template does, what to change for a quick CPU test, what a GPU run takes)
and the view it opens with (scale, offset). ``python tests/support/workflow_convert.py`` writes the UI files
from these; the layout keeps Train LoRA, its chart and the preview under it on a 1366x768 screen."""

CPU_STEP = ("a full-size SD1.5 step at 256 px took 3.8 s on an idle 2-core CPU in LoRA Loop's benchmark "
            "(benchmarks/RESULTS.md)")

# columns of the SD templates: notes and loaders | dataset and network | Train LoRA | save and prompts | sampler
SD_LAYOUT = {"1": (20, 380), "2": (20, 540), "3": (20, 760), "4": (370, 40), "5": (370, 250),
             "6": (720, 40, 420, 620), "7": (1180, 40, 320, 300), "8": (1180, 390), "9": (1180, 600),
             "10": (1180, 810), "11": (1540, 40), "12": (1540, 360), "13": (1540, 520, 320, 300)}
VIEW = {"scale": 0.75, "offset": [70, 90]}  # clear of the side bar and the top bar; Train LoRA with its
# preview and all its settings sockets fits a 1366x768 screen
# the templates with separate UNET / CLIP / VAE loaders
FLUX_LAYOUT = {"1": (20, 380), "2": (20, 540), "3": (20, 710), "4": (370, 40), "5": (370, 260),
               "6": (370, 505), "7": (370, 720), "8": (720, 40, 420, 620),
               "9": (1180, 40, 320, 300), "10": (1180, 390), "11": (1180, 550), "12": (1180, 710),
               "13": (1180, 870), "14": (1540, 40), "15": (1540, 360), "16": (1540, 520, 320, 300)}

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
        "layout": {**SD_LAYOUT, "16": (370, 610), "17": (370, 810), "14": (1900, 40, 320, 340),
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
        "ui": "Train with sd-scripts options (SD1.5).json",
        "api": "train_with_sd_scripts_options_sd15.api.json",
        "card": {"title": "Train with sd-scripts options", "model": "SD1.5", "family": "sd15",
                 "lines": ["the settings nodes, kohya's names", "warm-up, min-SNR, dropout, validation",
                           "CPU test: 256 px, 10 steps"]},
        "layout": {**SD_LAYOUT, "14": (1900, 40), "15": (2260, 40), "16": (370, 610), "17": (1900, 440),
                   "18": (20, 1010), "19": (1900, 720)},
        "view": VIEW,
        "note": (
            "## Train with sd-scripts options (SD1.5)\n"
            "kohya's usual options, each on its settings node under sd-scripts' name: 5 % warm-up into cosine, "
            "gradient clipping (*Optimizer Settings*), noise offset 0.05, min-SNR 5 (*Noise & Loss*), network "
            "dropout 0.1 (*Network Options*: also LoHa / LoKr / DoRA), max-norm 1 (*Network Training*), shuffled "
            "tags (*Captions*), a 10 % *Validation* split. *Load kohya Config* fills the same nodes from a file.\n\n"
            "**Change:** checkpoint, dataset folder, trigger words, any option.\n\n"
            "**Quick test on a CPU:** resolution 256, steps 10, validate_every_n_steps 5, *KSampler* steps 4 at "
            "256 x 256.\n\n"
            "**On a GPU:** 1500 steps at 512 px take minutes (estimate; not measured by LoRA Loop)."),
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
        "layout": {**FLUX_LAYOUT, "17": (370, 1075)},
        "view": VIEW,
        "note": (
            "## Train then generate (FLUX.1 dev)\n"
            "A FLUX.1 dev LoRA (all 304 double and single block Linears, rank 16) from UNETLoader + DualCLIPLoader "
            "+ VAELoader. The *Noise & Loss* node sets FLUX's resolution-dependent timestep sampling and trains "
            "at guidance 1.0; sampling uses FluxGuidance 3.5 at cfg 1.\n\n"
            "**Change:** the three loaders' files, *Load Dataset*, the prompt.\n\n"
            "**Quick test on a CPU:** not practical with the full model.\n\n"
            "**On a GPU:** *Train LoRA*'s memory `auto` picks block checkpointing and, on smaller cards, "
            "ComfyUI's partial loading; the planner's estimate at 1024 px with fp8 weights (UNETLoader weight_dtype "
            "fp8_e4m3fn) is about 16 GB checkpointed and 8 GB streamed (docs/memory.md; not measured on a GPU "
            "yet). Published FLUX LoRA speeds are 1.2-3.5 s/step on an RTX 4090 (not measured by LoRA Loop), so "
            "1000 steps take about an hour."),
    },
    {
        "ui": "Train then generate (Qwen-Image).json",
        "api": "train_then_generate_qwen_image.api.json",
        "card": {"title": "Train then generate", "model": "Qwen-Image", "family": "qwen_image",
                 "lines": ["UNET + Qwen2.5-VL + Wan VAE loaders", "musubi-tuner's targets and names",
                           "for a large GPU"]},
        "layout": FLUX_LAYOUT,
        "view": VIEW,
        "note": (
            "## Train then generate (Qwen-Image)\n"
            "A Qwen-Image LoRA (all 840 Linears of the 60 transformer blocks, rank 16, as musubi-tuner trains it) "
            "from UNETLoader + CLIPLoader (type qwen_image) + VAELoader, then sampled the way ComfyUI's Qwen-Image "
            "template does (ModelSamplingAuraFlow shift 3.1, cfg 2.5). Timesteps: musubi-tuner's shift 2.2. The "
            "file uses musubi-tuner's names and loads in ComfyUI's LoRA loader.\n\n"
            "**Change:** the three loaders' files, *Load Dataset*, the prompt.\n\n"
            "**Quick test on a CPU:** not practical with the 20B model.\n\n"
            "**On a GPU:** the fp8 model is 20 GB; *Train LoRA*'s memory `auto` checkpoints the blocks and, on "
            "cards that do not hold the weights, streams them through ComfyUI's partial loading (docs/memory.md "
            "has the planner's estimates; not measured on a GPU yet)."),
    },
    {
        "ui": "Train then generate (Z-Image).json",
        "api": "train_then_generate_z_image.api.json",
        "card": {"title": "Train then generate", "model": "Z-Image", "family": "z_image",
                 "lines": ["UNET + Qwen3 + FLUX VAE loaders", "musubi-tuner's targets, ComfyUI names",
                           "for a GPU"]},
        "layout": FLUX_LAYOUT,
        "view": VIEW,
        "note": (
            "## Train then generate (Z-Image)\n"
            "A Z-Image LoRA (the attention and feed-forward Linears of the 30 main layers, rank 16, as "
            "musubi-tuner trains it) from UNETLoader + CLIPLoader (type lumina2, Qwen3-4B) + VAELoader (the FLUX "
            "VAE), sampled like ComfyUI's Z-Image Turbo template (8 steps, cfg 1, res_multistep). Timesteps: "
            "musubi-tuner's shift 2.0. Keys are ComfyUI's fused-qkv names (what musubi-tuner's ComfyUI converter "
            "writes). Training on the distilled Turbo model weakens its few-step distillation: for lasting LoRAs "
            "train on the base model.\n\n"
            "**Change:** the three loaders' files, *Load Dataset*, the prompt.\n\n"
            "**Quick test on a CPU:** not practical with the 6B model.\n\n"
            "**On a GPU:** the bf16 model is 12 GB; *Train LoRA*'s memory `auto` checkpoints the blocks and "
            "streams them on smaller cards (docs/memory.md; not measured on a GPU yet)."),
    },
]

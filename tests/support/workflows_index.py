"""The shipped example workflows: UI file in example_workflows/, API twin in tests/workflows/."""

EXAMPLES = [
    {
        "ui": "Train then generate (SD1.5).json",
        "api": "train_then_generate_sd15.api.json",
        "layout": {"1": (20, 420), "2": (20, 40), "3": (360, 40), "4": (700, 40), "5": (360, 420),
                   "6": (1040, 40), "7": (1380, 40), "8": (1380, 260), "9": (1380, 470), "10": (1380, 680),
                   "11": (1720, 260), "12": (2060, 260), "13": (2060, 420)},
    },
]

"""The standard suites' rows (`python -m train.benchmark --suite cpu|gpu`): a table that the
suite runner (suites.py) and the report (report.py) both read."""

# Standard suites: (model, batch, seq, target_seq) trained in f32 and bf16, plus decoding.
SUITES = {
    "cpu": {
        "train": [
            ("gpt2", 8, 256, None),
            ("bert-base-uncased", 8, 128, None),
            ("t5-small", 8, 128, 128),
        ],
        "dtypes": ("f32", "bf16"),
        # 3 rounds of 2 steps, ours and PyTorch alternating: this shared VM's speed drifts by
        # 20% within the hour (cpu-profile.md), and alternating lets both sides see the drift.
        "steps": 2,
        "rounds": 3,
        "warmup": 1,
        "decode": {"model": "gpt2", "batches": (1, 16), "prompt_len": 32, "new_tokens": 64},
        "notes": "cpu-profile.md",  # relative to the report
    },
    # One NVIDIA GPU, bf16 with f32 weights (cuDNN flash attention via kernel "auto"); gpt2-medium
    # at 1024 tokens is the size of the MFU target in the README.
    "gpu": {
        "train": [
            ("gpt2-medium", 16, 1024, None),
            ("gpt2", 16, 1024, None),
            ("bert-base-uncased", 32, 512, None),
            ("t5-small", 16, 512, 512),
        ],
        "dtypes": ("bf16",),
        "steps": 20,
        "warmup": 3,
        "decode": {"model": "gpt2", "batches": (1, 16), "prompt_len": 32, "new_tokens": 128},
        "notes": "../gpu-notes.md",
        "platform": "gpu",
    },
}

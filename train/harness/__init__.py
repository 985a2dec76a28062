"""Zero- and few-shot evaluation with EleutherAI's lm-evaluation-harness (the `eval` extra).

    python -m train.harness --model runs/gpt --tasks triptych_choice,triptych_perplexity

    import lm_eval
    from train.harness import TriptychLM, task_manager
    lm_eval.simple_evaluate(model=TriptychLM("runs/gpt"), tasks=["triptych_choice"],
                            task_manager=task_manager())

`TriptychLM` (train/harness/lm.py) is an `lm_eval.api.model.TemplateLM` registered as
"triptych": any model reference, decoders and encoder-decoders, scored on the device mesh in a
few fixed shapes (train/harness/batching.py). `task_manager` finds lm-eval's own tasks, the
example tasks shipped in train/harness/tasks/ and any `include_path` folders of task YAML.

The names are imported on first use, so that the training config (configs/common.py's
`eval_harness` section, train/harness/live.py) loads without lm-eval installed.
"""

import importlib

_EXPORTS = {
    "HarnessError": "train.harness.lm",
    "TriptychLM": "train.harness.lm",
    "TASKS_DIR": "train.harness.tasks",
    "task_manager": "train.harness.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

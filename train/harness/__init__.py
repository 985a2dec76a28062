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
"""

from train.harness.lm import HarnessError, TriptychLM
from train.harness.tasks import TASKS_DIR, task_manager

__all__ = ["TASKS_DIR", "HarnessError", "TriptychLM", "task_manager"]

"""Example lm-eval tasks on local JSONL files, and the task manager that finds them.

    triptych_choice      multiple choice (acc, acc_norm): everyday questions, 2-3 answers
    triptych_perplexity  loglikelihood_rolling (word_perplexity, byte_perplexity, bits_per_byte)
    triptych_generate    generate_until (exact_match): short answers ending at a newline
    triptych_sst2        GLUE SST-2 sentiment as two choices (acc), from $SST2_DIR's TSV files

Each task is a YAML file beside its data (`dataset_path: json`, `dataset_kwargs.data_files`);
`files.load_json` reads the file names relative to this folder, so the tasks run from any
directory. A task of your own needs only the YAML, with absolute `data_files` (README.md).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent


def task_manager(include_path=None, metadata: dict | None = None):
    """lm-eval's `TaskManager` over its own catalogue, these example tasks and `include_path`
    (a folder or a list of folders of task YAML)."""
    from lm_eval.tasks import TaskManager

    extra = [include_path] if isinstance(include_path, str | Path) else list(include_path or [])
    return TaskManager(include_path=[str(TASKS_DIR), *map(str, extra)], metadata=metadata)

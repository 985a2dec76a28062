"""Experiment configs: `configs/<name>.py:get_config(arg)` returns an ml_collections ConfigDict.

`arg` picks a variant (`:smoke` shrinks everything for a run of seconds); any key can be
overridden on the command line, e.g. `--config.steps=100 --config.model.d_model=256`.
"""

"""The closed vocabulary of logical axis names.

Every parameter and every block-boundary activation in models/ is annotated with these names;
train/partitioning.py maps them onto the physical mesh axes (`data`, `fsdp`, `tensor`) with rules
taken from the run config. Nothing in models/ knows about meshes.
"""

BATCH = "batch"
LENGTH = "length"  # sequence positions of activations
EMBED = "embed"  # model width
HEADS = "heads"  # attention heads (query heads; key/value heads under grouped-query attention)
KV = "kv"  # per-head width
MLP = "mlp"  # feed-forward hidden width
VOCAB = "vocab"
LAYERS = "layers"  # the stacked-layer axis under scan

ALL = (BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB, LAYERS)

# Activation layouts used at block boundaries.
ACTIVATION = (BATCH, LENGTH, EMBED)
LOGITS = (BATCH, LENGTH, VOCAB)

"""Logical axis names of parameters and activations, and the rules that map them to a mesh.

The model only ever names logical axes; which physical mesh axis (data, fsdp, tensor)
shards each one is decided here, overridable from `config.mesh.rules`.
"""

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
NORM = "norm"
LAYERS = "layers"
LAYER_CHOICE = "layer_choice"  # output axis of the Decision Maker: one score per layer

# Activation axes.
ACT_BATCH = "act_batch"
ACT_LEN = "act_len"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

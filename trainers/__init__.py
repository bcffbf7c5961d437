"""LAid distillation: the method's building blocks and the training recipe.

Building blocks (one concept per module):
- ``trainers.head_mixer``: learnable teacher->student head mixers (paper Eq. 3/7).
- ``trainers.losses``: Q/K alignment (Eq. 7), progressive distance-weighted attention matching,
  KL + SFT (Eq. 8).
- ``trainers.rope_gain``: learnable RoPE response gain, folded into q_proj/k_proj at export.
- ``trainers.health``: health telemetry (term gradients, Q/K norm ratios, attention entropies,
  mixer rows, g_q * g_k) for the training log and head_weights.nc.
- ``trainers.pairing`` / ``trainers.plan``: can this teacher/student pair be distilled, and how
  (layer pairs, mixer shapes, vocabulary handling, memory per GPU), from config.json alone.
- ``trainers.context_extension``: inference-time baselines (YaRN, SelfExtend).

The recipe (``trainers.recipe``, ``trainers.distill``, ...) composes these.
"""

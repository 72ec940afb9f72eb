"""XLA flags the training step is planned and run with (set before jax starts; no jax import here).

On the GPU mesh XLA combines collectives to launch fewer of them: all-gathers of several layers'
parameters, reduce-scatters of several layers' gradients. Combined, a layer's gathered weights and
unsharded gradients wait for the others' and stay live across the layer loop — XLA:GPU's own plan
of the 20B stage-4 step on 8 × H100 grew 5.9 GB per layer that way, 2.1 GB with collectives left
per layer and each layer's parameters held to their sharding inside the layer
(``trunk.model.prefill``'s ``layer_sharding``; README Benchmarks). A layer's collectives are large
enough on their own. The flags are GPU options; other backends ignore them.
"""
from __future__ import annotations

TRAIN = ("--xla_gpu_all_gather_combine_threshold_bytes=1",
         "--xla_gpu_reduce_scatter_combine_threshold_bytes=1",
         "--xla_gpu_all_reduce_combine_threshold_bytes=1")


def with_train_flags(xla_flags: str) -> str:
    """``xla_flags`` (the XLA_FLAGS value) plus every ``TRAIN`` flag it does not set itself."""
    have = {f.split("=", 1)[0] for f in xla_flags.split()}
    return " ".join([xla_flags.strip(), *(f for f in TRAIN if f.split("=", 1)[0] not in have)]).strip()

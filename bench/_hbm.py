"""How much memory a decode step must read, and the device's peak bandwidth: the denominator and
numerator of HBM-bandwidth utilisation (bytes read per step / step time / peak), shared by the
decode benchmarks.

Bytes per step (one token for each of ``rows`` rows, ``context`` cached positions per row):
  * every weight of the trunk except the experts and the embedding table, once;
  * the embedding rows of the step's tokens;
  * the experts the MoE reads: all of them for the ``dense`` implementation, the expected number of
    distinct experts ``rows`` tokens × top-k choose (uniform routing) for ``gather``;
  * each row's KV cache over the window attention reads (full layers: ``context``; sliding: the window);
  * the sidecar's instrumented layers when ``sidecar`` params are given (SNC, adapters).
"""
from __future__ import annotations

import numpy as np

# Peak HBM bandwidth, bytes/s (anchors.md §F): matched against jax's device_kind.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "B200": 8.0e12, "A100": 2.04e12}


def peak_bandwidth(device_kind: str) -> float | None:
    for name, bw in PEAK_BANDWIDTH.items():
        if name.lower() in device_kind.lower():
            return bw
    return None


def step_bytes(cfg, rows: int, context: int, moe_impl: str, sidecar_params=None) -> int:
    """Bytes a decode step reads (see the module docstring). ``cfg``: TrunkConfig."""
    from pdt_jax.trunk.params import trunk_specs
    import jax

    specs = trunk_specs(cfg)
    size = lambda s: int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
    layer = specs["layers"][0]
    expert_keys = ("gate_up", "gate_up_bias", "down", "down_bias")
    per_expert = sum(size(layer[k]) for k in expert_keys) / cfg.num_experts
    dense_rest = sum(size(v) for k, v in layer.items() if k not in expert_keys)
    if moe_impl == "dense":
        experts = cfg.num_experts
    else:
        experts = cfg.num_experts * (1 - (1 - cfg.experts_per_token / cfg.num_experts) ** rows)
    itemsize = np.dtype(cfg.dtype).itemsize
    kv = 0
    for i in range(cfg.num_layers):
        seen = min(context, cfg.sliding_window) if cfg.is_sliding(i) else context
        kv += 2 * rows * cfg.num_kv_heads * seen * cfg.head_dim * itemsize
    embed_row = size(specs["embed"]) // cfg.vocab_size
    total = (cfg.num_layers * (dense_rest + experts * per_expert) + kv + rows * embed_row
             + size(specs["unembed"]) + size(specs["final_norm"]))
    if sidecar_params is not None:
        total += sum(int(x.nbytes) for lp in sidecar_params["layers"] for x in jax.tree.leaves(lp))
    return int(total)

"""PDT on GPT-OSS: the trunk, the sidecar (paper defaults), the device mesh and its sharding rules.

    python launch/infer.py --config=configs/model/pdt.py:tiny --prompt "Tell me about Velmora."

Variants (``get_config(arg)``): default = GPT-OSS-20B trunk with the paper's sidecar (3 streams,
notes_dim 2048, top 8 of 24 layers instrumented, 16 planner slots over V_p = 65 536, τ = 4, Δ = 1,
H = 32, bus capacity 4) on every local device, experts split over them; ``small`` = the 4-layer
benchmark trunk; ``tiny`` = the 2-layer test trunk; ``demo`` = the 2-layer trunk of ``make demo``
(all three data-parallel over the local devices).

Override any field from the command line: ``--config.sidecar.lag=0``, ``--config.mesh.expert=4``,
``--config.sharding.vocab=tensor,expert`` (mesh axes: data, fsdp, expert, tensor; one mesh axis
may be -1 = the devices left; a sharding rule is a comma-separated list of mesh axes, '' = whole).
"""
from ml_collections import ConfigDict

from configs.model import gpt_oss_20b
from pdt_jax.sharding import ShardingRules


def sidecar(**overrides) -> ConfigDict:
    cfg = ConfigDict(dict(
        stream_names=("stream_1", "stream_2", "stream_3"), notes_dim=2048, instrumented_layers=(),
        top_k_layers=8, adapter_bottleneck=512, snc_heads=32, snc_head_dim=64, gate_init=-4.0,
        planner_slots=16, plan_vocab_size=65536, plan_dim=1024, plan_hash_salt="pdt-plan-v1",
        coverage_heads=8, coverage_dim=512, agree_hidden=256, block_size=4, lag=1,
        commit_horizon=32, bus_capacity=4, readiness_threshold=0.5,
    ))
    cfg.update(overrides)
    return cfg


def model(trunk: ConfigDict, side: ConfigDict, **mesh) -> ConfigDict:
    sizes = dict(data=1, fsdp=1, expert=1, tensor=1)
    sizes.update(mesh)
    return ConfigDict(dict(trunk=trunk, sidecar=side, mesh=ConfigDict(sizes),
                           sharding=ConfigDict(ShardingRules().to_strings())))


def get_config(arg: str | None = None) -> ConfigDict:
    if arg in (None, "", "20b"):
        # 8 GPUs: each holds 4 of the 32 experts (the bulk of the weights); the rest is replicated.
        return model(gpt_oss_20b.get_config(), sidecar(), expert=-1)
    small = dict(notes_dim=64, top_k_layers=2, adapter_bottleneck=32, snc_heads=4, snc_head_dim=16,
                 plan_vocab_size=4096, plan_dim=64, coverage_heads=4, coverage_dim=64, agree_hidden=64)
    if arg == "small":
        return model(gpt_oss_20b.get_config("small"), sidecar(**small), data=-1)
    if arg == "tiny":
        return model(gpt_oss_20b.get_config("tiny"), sidecar(
            notes_dim=32, top_k_layers=2, adapter_bottleneck=16, snc_heads=2, snc_head_dim=16,
            plan_vocab_size=1024, plan_dim=32, coverage_heads=2, coverage_dim=32, agree_hidden=32,
            commit_horizon=16), data=-1)
    if arg == "demo":
        # The bus keeps 12 notes per stream (48 tokens at τ = 4): a Legacy stream still sees the
        # Founding stream's first sentence when it writes the founder, ~40 tokens later.
        return model(gpt_oss_20b.get_config("demo"), sidecar(
            # notes as wide as the trunk: teacher-note vectors are cut to notes_dim (D6), and a
            # founder's name is one token of a ~30-token note, already diluted by the mean.
            notes_dim=128, top_k_layers=2, adapter_bottleneck=32, snc_heads=4, snc_head_dim=16,
            plan_vocab_size=1024, plan_dim=32, coverage_heads=2, coverage_dim=32, agree_hidden=32,
            commit_horizon=16, bus_capacity=12,
            # SNC and adapters start as zero maps (untrained PDT = the trunk whatever the gates), so
            # the gates may start half open: from sigmoid(-4), Adam (~lr per step) would need
            # thousands of steps to open them; the demo trains a few hundred.
            gate_init=0.0), data=-1)
    raise ValueError(f"configs/model/pdt.py: unknown variant {arg!r}; valid: '', 'small', 'tiny', 'demo'")

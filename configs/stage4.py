"""Stage 4, full trunk unfreeze: every trunk parameter trains too (> 190 GB per GPU in the seed). At
GPT-OSS-20B on 8 × H100, XLA:GPU's own plan of this step grows 2.1 GB per layer with each layer's
parameters held to their sharding and collectives per layer (5.9 GB without): ≈ 66 GB carried from
2 and 4 layers to 24 (README Benchmarks, bash bench/gpu_aot_plan.sh) — not yet a 24-layer plan or a run.

    python launch/train.py --config=configs/stage4.py:tiny --workdir=runs/stage4

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(4, arg)

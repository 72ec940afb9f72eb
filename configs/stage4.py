"""Stage 4, full trunk unfreeze: every trunk parameter trains too (> 190 GB per GPU in the seed). At
GPT-OSS-20B on 8 × 80 GB it does not fit yet: XLA:GPU's own plan of this step grows 5.9 GB per layer
(≈ 150 GB at 24 layers; README Benchmarks, bench/gpu_aot_plan.sh). The tiny and small variants run.

    python launch/train.py --config=configs/stage4.py:tiny --workdir=runs/stage4

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(4, arg)

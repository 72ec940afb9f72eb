"""Stage 4, full trunk unfreeze: every trunk parameter trains too (> 190 GB per GPU in the seed; see bench/memory_plan.py).

    python launch/train.py --config=configs/stage4.py:tiny --workdir=runs/stage4

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(4, arg)

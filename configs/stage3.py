"""Stage 3, commit control: the agreement (readiness) and coverage heads join; bus mixing and stream dropout.

    python launch/train.py --config=configs/stage3.py:tiny --workdir=runs/stage3

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(3, arg)

"""Stage 2, notes bus: the speculation head joins and streams read each other's notes.

    python launch/train.py --config=configs/stage2.py:tiny --workdir=runs/stage2

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(2, arg)

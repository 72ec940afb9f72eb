"""Stage 0, planner pretraining: the planner, plan embedding and notes head learn from the teacher's plan and notes.

    python launch/train.py --config=configs/stage0.py:tiny --workdir=runs/stage0

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(0, arg)

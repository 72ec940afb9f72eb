"""Stage 1, stream bootstrap: stream adapters, SNC and the stream classifier join; LM CE and KD switch on.

    python launch/train.py --config=configs/stage1.py:tiny --workdir=runs/stage1

Variants and fields: configs/stages.py.
"""
from configs import stages


def get_config(arg=None):
    return stages.get_config(1, arg)

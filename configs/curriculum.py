"""Stages 0–3 in sequence, each starting from the previous stage's final checkpoint:

    python launch/train.py --config=configs/curriculum.py:tiny --workdir=runs/curriculum

Each stage trains in ``<workdir>/stage<i>_<name>`` (its own checkpoints, TensorBoard events,
telemetry and export); the last one's ``export/`` is what ``launch/infer.py --checkpoint`` reads.
Shared fields (model, data, train, ...) as in configs/stages.py; per-stage blocks under
``stages.stage<i>`` (``--config.stages.stage3.bus_mix=0.5``) and lengths under ``steps_per_stage``.
"""
from ml_collections import ConfigDict

from configs import stages


def get_config(arg=None):
    c = stages.get_config(0, arg)
    del c["stage"]
    c.stages = ConfigDict({f"stage{i}": stages.variant_stage(stages.stage_block(i), arg or "") for i in range(4)})
    for i in range(1, 4):
        c.stages[f"stage{i}"].init_from = "previous"   # replaced by the previous stage's workdir
    per_stage = {"": (3750, 6250, 15000, 25000), "20b": (3750, 6250, 15000, 25000), "small": (50, 50, 50, 50),
                 "tiny": (20, 20, 20, 20)}[arg or ""]
    c.steps_per_stage = ConfigDict({f"stage{i}": n for i, n in enumerate(per_stage)})
    return c

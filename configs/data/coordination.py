"""python -m data_pipeline run --config=configs/data/coordination.py[:tiny]

The coordination task of ``make demo`` (data_pipeline/coordination.py): three-part town articles
whose parts must agree on an invented founder and year and must not repeat each other's details;
ground truth in ``<work_dir>/source/coordination_truth.json``. Procedural teacher, offline.
``tiny`` = 24 documents (tests).
"""
from configs.data.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "coordination"
    c.work_dir = "runs/data/coordination"
    c.source.kind = "coordination"
    c.source.num_documents = 1200
    c.preflight.min_chars = 100
    c.collate.fractions = (0.9, 0.05, 0.05)
    if arg == "tiny":
        c.name = "coordination_tiny"
        c.work_dir = "runs/data/coordination_tiny"
        c.source.num_documents = 24
        c.collate.fractions = (0.5, 0.25, 0.25)
    elif arg:
        raise ValueError(f"configs/data/coordination.py: unknown variant {arg!r} (use 'tiny')")
    return c

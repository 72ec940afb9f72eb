"""python -m data_pipeline run --config=configs/data/synthetic.py[:tiny]

Synthetic-world corpus, procedural teacher: the whole pipeline offline. ``tiny`` = 12 documents.
"""
from configs.data.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "synthetic"
    c.work_dir = "runs/data/synthetic"
    if arg == "tiny":
        c.name = "synthetic_tiny"
        c.work_dir = "runs/data/synthetic_tiny"
        c.source.num_documents = 12
        c.teacher.concurrency = 2
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (use 'tiny')")
    return c

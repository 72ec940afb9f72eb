"""python -m data_pipeline run --config=configs/data/files.py[:tiny] --config.source.paths=a.jsonl,b.parquet

Your own documents (JSONL or Parquet rows of {doc_id, title, sections: [{heading, text}]}) with
the offline procedural teacher. ``tiny`` processes the first 10 documents only.
"""
from configs.data.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "files"
    c.work_dir = "runs/data/files"
    c.source.kind = "files"
    c.source.paths = "data/documents.jsonl"
    if arg == "tiny":
        c.name = "files_tiny"
        c.work_dir = "runs/data/files_tiny"
        c.preflight.min_chars = 50
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (use 'tiny')")
    return c

"""launch/evaluate.py's config: which analyzer, on which manifests.

    python launch/evaluate.py --config=configs/evaluate.py --config.command=analyze \\
        --config.manifests=runs/pdt/manifests --config.sequential=runs/seq/manifests --config.output=eval.json
"""
from ml_collections import ConfigDict

COMMANDS = ("analyze", "summarize", "compare", "score")


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/evaluate.py: takes no variant, found {arg!r}")
    return ConfigDict(dict(
        command="analyze",     # analyze | summarize | compare | score
        manifests="",          # manifest files or directories of them, comma-separated
        sequential="",         # the same, of the sequential baseline (speed-up in analyze; required by compare)
        truth="",              # score: the coordination task's coordination_truth.json
        output="",             # write the figures here as JSON (atomically); empty: print only
        table=True,            # print a readable table
    ))

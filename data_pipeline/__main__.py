"""Command line.

  python -m data_pipeline run --config=configs/data/synthetic.py:tiny \
      [--stages=preflight,plans,notes,collate,export] [--limit=N]
  python -m data_pipeline synth --out=DIR --num_documents=N [--seed=S]
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from data_pipeline import pipeline, synthetic_world
from data_pipeline.storage import InputError
from data_pipeline.teachers.base import TeacherError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Dataset config file (configs/data/*.py).")
_STAGES = flags.DEFINE_list("stages", list(pipeline.STAGES), "Stages to run, in pipeline order.")
_LIMIT = flags.DEFINE_integer("limit", None, "Process at most this many documents.")
_OUT = flags.DEFINE_string("out", None, "synth: output directory.")
_NUM = flags.DEFINE_integer("num_documents", 30, "synth: number of documents.")
_SEED = flags.DEFINE_integer("seed", 0, "synth: world seed.")


def main(argv):
    command = argv[1] if len(argv) > 1 else "run"
    if len(argv) > 2:
        raise app.UsageError(f"unexpected arguments {argv[2:]}")
    if command == "synth":
        if not _OUT.value:
            raise app.UsageError("synth needs --out")
        print(json.dumps(synthetic_world.write_world(_OUT.value, _NUM.value, _SEED.value)))
        return 0
    if command != "run":
        raise app.UsageError(f"unknown command {command!r} (use 'run' or 'synth')")
    if _CONFIG.value is None:
        raise app.UsageError("run needs --config=configs/data/<name>.py[:variant]")
    try:
        pipeline.run(_CONFIG.value, _STAGES.value, _LIMIT.value)
    except (InputError, TeacherError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        app.run(main)
    except (AttributeError, KeyError) as e:  # a --config.* override naming no field (config_flags raises these)
        overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
        detail = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
        detail = detail.strip("\"'")
        print(f"error: unknown dataset config field '{detail} (in {overrides})", file=sys.stderr)
        sys.exit(2)

"""Train PDT's sidecar on a frozen trunk: one curriculum stage, or the whole curriculum.

    python launch/train.py --config=configs/stage2.py:tiny --workdir=runs/try
    python launch/train.py --config=configs/curriculum.py:tiny --workdir=runs/curriculum
    python launch/train.py --config=configs/stage2.py --workdir=/ckpt/stage2 \\
        --config.trunk_checkpoint=/ckpt/gpt-oss-20b-converted --config.data.export_dir=/data/export \\
        --config.stage.init_from=/ckpt/stage1 --config.train.steps=15000

``--config`` is an ml_collections config file (``configs/stage*.py``, ``configs/curriculum.py``);
override any field with ``--config.FIELD=VALUE``. ``--workdir`` receives TensorBoard events
(``tb/``), checkpoints (a rerun resumes from the latest), telemetry JSON and ``export/`` (the
trained sidecar, a PDT checkpoint for ``launch/infer.py --checkpoint``).

Several hosts: one process per host, started by the launcher. Under SLURM (``SLURM_NTASKS`` > 1)
``jax.distributed.initialize()`` reads everything from the environment; elsewhere give
``--coordinator=HOST:PORT --num_processes=N --process_id=I``.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # `python launch/train.py` from the repository root (configs/ is a package there)
    sys.path.insert(0, ROOT)

from pdt_jax import xla_flags  # noqa: E402  (no jax import: the flags must precede jax's start)

os.environ["XLA_FLAGS"] = xla_flags.with_train_flags(os.environ.get("XLA_FLAGS", ""))

config_flags.DEFINE_config_file("config", None, "training config file (configs/stage*.py[:variant])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, TensorBoard events, telemetry and the export")
flags.DEFINE_string("coordinator", None, "multi-host: the coordinator's HOST:PORT")
flags.DEFINE_integer("num_processes", None, "multi-host: how many processes (one per host)")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def distributed_init() -> None:
    import jax
    if FLAGS.coordinator:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pdt_jax.train import loop
    from pdt_jax.trunk.config import ConfigError

    from absl import logging
    logging.set_verbosity(logging.WARNING)   # Orbax's per-save INFO lines would bury the progress bar
    distributed_init()
    try:
        results = loop.run(FLAGS.config, FLAGS.workdir)
    except (ConfigError, ValueError, loop.TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"train: {r['workdir']}: step {r['step']}" + (f", export {r['export']}" if r.get("export") else ""))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))

"""``make demo``: a tiny PDT that learns to coordinate, end to end (launch/demo.py).

    python launch/demo.py --config=configs/demo.py
    python launch/demo.py --config=configs/demo.py --config.runs=runs/demo_long \
        --config.out=experiments/demo_long --config.stage_steps='(30, 80, 450, 20)'
    python launch/demo.py --config=configs/demo.py:reduced     # minutes: every artefact, little training

Dataset (configs/data/coordination.py) → trunk pretraining (configs/pretrain_tiny.py) → stages
0–3 (configs/stage<i>.py:demo) → parallel inference on held-out prompts in five settings (bus,
ablated, ablated_all, gate0, sequential) → ``score`` and ``analyze`` → ``<out>/report.md`` and
``report.json``. Every step resumes: a finished step is skipped, a killed one continues from its
last checkpoint. ``runs`` remembers the settings that built it (``runs/demo_config.json``): other
seeds, sizes or step counts need another ``--config.runs``.
"""
from ml_collections import ConfigDict


def get_config(arg=None):
    if arg not in (None, "", "reduced"):
        raise ValueError(f"configs/demo.py: unknown variant {arg!r}; valid: '', 'reduced'")
    c = ConfigDict(dict(
        seed=0,
        out="experiments/demo",        # report.md, report.json, plots/, manifests/
        runs="runs/demo",              # dataset, trunk, stage workdirs (resumable)
        documents=600,                 # coordination articles (90% train, 5% validation, 5% test)
        pretrain_steps=400,
        pretrain_batch=16,
        stage_steps=(30, 80, 160, 20),  # stages 0-3
        stage_batch=8,
        lr=3e-3,
        prompts=16,                    # held-out (test split) prompts answered in every setting
        max_new_tokens=72,             # per stream (the sequential baseline gets 3x)
        progress=True,
        stage_forms=(),                # per stage, a training forward form overriding the stage's ('' keeps it)
        warmup=True,                   # run each inference setting once to compile before the timed run
    ))
    if arg == "reduced":
        c.out, c.runs = "experiments/demo_reduced", "runs/demo_reduced"
        c.documents, c.pretrain_steps, c.pretrain_batch = 60, 4, 4
        c.stage_steps, c.stage_batch = (2, 2, 2, 2), 2
        c.prompts, c.max_new_tokens = 2, 12
        # Minutes, not quality: stages 2-3 train the two-pass form (compiles faster than the exact
        # form's scan of rounds), and the timings include compilation.
        c.stage_forms, c.warmup = ("", "", "passes", "passes"), False
    return c

"""Runs the stages in order; each stage reads only the previous stages' files, so any stage can run
alone once its inputs exist."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from data_pipeline import collate, config_check, export, notes, plans, preflight
from data_pipeline.context import Context
from data_pipeline.storage import clean_stale_temps

STAGES = {"preflight": preflight.run, "plans": plans.run, "notes": notes.run,
          "collate": collate.run, "export": export.run}


def run(config, stages: list[str] | None = None, limit: int | None = None,
        log=sys.stdout) -> dict[str, dict]:
    """Runs ``stages`` (default: all, in pipeline order) and returns each stage's report."""
    stages = list(STAGES) if not stages else stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    config_check.validate(config)  # every field known, every value sane: before any stage or request
    ordered = [s for s in STAGES if s in stages]
    ctx = Context(config=config, work_dir=Path(config.work_dir), limit=limit)
    reports = {}
    try:
        for name in ordered:
            clean_stale_temps(ctx.stage_dir(name))  # what a killed writer left (never read, only untidy)
            if name == "preflight":
                clean_stale_temps(ctx.work_dir / "source")
            report = STAGES[name](ctx)
            reports[name] = report
            if log is not None:
                summary = {"stage": name, **{k: report[k] for k in ("skipped", "counts", "wall_s",
                                                                      "documents_per_s")
                                             if k in report}}
                print(json.dumps(summary, sort_keys=True), file=log, flush=True)
    finally:
        ctx.close()
    return reports

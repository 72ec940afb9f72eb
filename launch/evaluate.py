"""Evaluate run manifests (pdt_jax/evaluation.py): per-manifest figures, a summary over many, or
sequential-vs-PDT comparisons, as a table and as JSON.

    python launch/evaluate.py --config=configs/evaluate.py --config.command=analyze \\
        --config.manifests=runs/pdt --config.sequential=runs/seq --config.output=analysis.json
    python launch/evaluate.py --config=configs/evaluate.py --config.command=summarize --config.manifests=a,b
    python launch/evaluate.py --config=configs/evaluate.py --config.command=compare \\
        --config.manifests=runs/pdt --config.sequential=runs/seq

    python launch/evaluate.py --config=configs/evaluate.py --config.command=score \
        --config.manifests=experiments/demo/manifests/bus --config.truth=runs/demo/data/source/coordination_truth.json

Manifests whose plan-hashing metadata differ are refused. ``score`` measures answers to the
coordination task (data_pipeline/coordination.py) against its ground truth: cross-part consistency
of the shared facts, contradictions, redundancy, coverage precision / recall / F1 against the plan.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "evaluate.py"), "evaluation config",
                                lock_config=True)
FLAGS = flags.FLAGS


def _paths(value: str) -> list[str]:
    return [p.strip() for p in str(value).split(",") if p.strip()]


def run(c) -> dict:
    from configs.evaluate import COMMANDS
    from pdt_jax import evaluation as ev

    if c.command not in COMMANDS:
        raise ev.EvaluationError(f"config field 'command': expected one of {COMMANDS}, found {c.command!r}")
    items = ev.load(_paths(c.manifests))
    if c.command == "score":
        if not c.truth:
            raise ev.EvaluationError("config field 'truth': score needs the coordination task's ground truth "
                                     "(<data work_dir>/source/coordination_truth.json)")
        truth = ev.load_truth(c.truth)
        result = {"command": "score", "truth": c.truth, "score": ev.score(items, truth),
                  "answers": [dict(ev.score_answer(m, truth, p), file=p) for p, m in items]}
        text = ev.table([result["score"]], ev.SCORE_COLUMNS)
        return _emit(c, result, text)
    seq = ev.load(_paths(c.sequential)) if c.sequential else []
    if seq:
        ev.check_hashing(items[:1] + seq)
    paired = ev.pair_sequential(items, seq)
    rows = [dict(ev.analyze(m, paired.get(m["prompt_index"])), file=p) for p, m in items]
    if c.command == "analyze":
        result = {"command": "analyze", "manifests": rows}
        text = ev.table(rows)
    elif c.command == "summarize":
        result = {"command": "summarize", "manifests": rows, "summary": ev.summarize(rows)}
        text = ev.table(rows) + "\n\n" + json.dumps(result["summary"], indent=1)
    else:
        if not seq:
            raise ev.EvaluationError("config field 'sequential': compare needs the sequential baseline's manifests")
        missing = [p for p, m in items if m["prompt_index"] not in paired]
        if missing:
            raise ev.EvaluationError(f"compare: no sequential manifest for the prompt of {missing[0]}")
        comps = [ev.compare(paired[m["prompt_index"]], m) for _, m in items]
        result = {"command": "compare", "comparisons": comps}
        text = ev.table(comps, ("prompt_index", "unigram_f1", "bigram_f1", "sequential_tokens", "parallel_tokens",
                                "total_s_delta", "speedup", "parallel_rollback_fraction"))
    return _emit(c, result, text)


def _emit(c, result: dict, text: str) -> dict:
    if c.table:
        print(text)
    if c.output:
        tmp = c.output + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(c.output)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, c.output)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pdt_jax.evaluation import EvaluationError
    try:
        run(FLAGS.config)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)

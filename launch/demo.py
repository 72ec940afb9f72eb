"""The standing experiment: a tiny PDT learns to coordinate its streams through the notes bus.

    python launch/demo.py --config=configs/demo.py            # make demo
    python launch/demo.py --config=configs/demo.py:reduced    # every artefact in minutes (tests)

1. the coordination dataset (data_pipeline/coordination.py, procedural teacher) and its tokenizer;
2. trunk pretraining (configs/pretrain_tiny.py), exported in the trunk format and frozen;
3. the curriculum, stages 0–3 (configs/stage<i>.py:demo), each from the previous one's export;
4. parallel inference on held-out prompts, greedy, in five settings: ``bus`` (PDT as trained),
   ``ablated`` (``--cf-ablate all --cf-ablate-keep-seed``: every published note hidden, the plan's
   snapshot 0 kept), ``ablated_all`` (``--cf-ablate all``: the whole bus hidden, snapshot 0
   included), ``gate0`` (``--gate-g 0``: the trunk alone, sidecar residuals off) and
   ``sequential`` (the trunk writing the whole article in one stream);
5. ``score`` (consistency, contradictions, redundancy, coverage) and ``analyze`` (rollbacks,
   tokens/s) of every setting → ``<out>/report.json``, ``<out>/report.md`` and PNG plots.

Each step is skipped when its result exists and resumes from its checkpoints when it was killed.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "demo.py"), "demo config file[:variant]",
                                lock_config=True)
FLAGS = flags.FLAGS

SETTINGS = {   # name -> launch/infer.py flags
    "bus": [],
    "ablated": ["--cf-ablate", "all", "--cf-ablate-keep-seed", "--cf-tag", "ablated"],
    "ablated_all": ["--cf-ablate", "all", "--cf-tag", "ablated_all"],
    "gate0": ["--gate-g", "0", "--no-gate-annealing"],
    "sequential": ["--baseline", "sequential"],
}
METRICS = {"consistency": "consistency", "contradictions": "contradictions", "redundancy": "redundancy",
           "coverage_f1": "coverage_f1", "rollback_rate": "rollback_fraction", "tokens_per_s": "tokens_per_s"}


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


# The fields that decide what runs/ holds; out, progress and the inference fields may change freely.
BUILD_FIELDS = ("seed", "documents", "pretrain_steps", "pretrain_batch", "stage_steps", "stage_batch", "lr", "stage_forms")


def check_config(c) -> None:
    """Bad demo fields fail before anything runs, naming the field."""
    if len(tuple(c.stage_forms)) not in (0, 4):
        raise ValueError(f"config field 'stage_forms': empty or four forms ('' keeps a stage's), found {tuple(c.stage_forms)}")
    if len(tuple(c.stage_steps)) != 4 or any(int(s) < 1 for s in c.stage_steps):
        raise ValueError(f"config field 'stage_steps': four step counts >= 1 (stages 0-3), found {tuple(c.stage_steps)}")
    for field in ("documents", "pretrain_steps", "pretrain_batch", "stage_batch", "prompts", "max_new_tokens"):
        if int(c[field]) < 1:
            raise ValueError(f"config field {field!r}: must be >= 1, found {c[field]}")


def claim_runs_dir(c) -> None:
    """``<runs>/demo_config.json`` records the fields that built the directory: a rerun with other
    ones would mix steps trained under different settings, so it is refused, naming the fields."""
    runs = Path(c.runs)
    want = {k: (list(c[k]) if k in ("stage_steps", "stage_forms") else c[k]) for k in BUILD_FIELDS}
    stamp = runs / "demo_config.json"
    if stamp.exists():
        have = json.loads(stamp.read_text())
        changed = sorted(k for k in BUILD_FIELDS if have.get(k) != want[k])
        if changed:
            raise ValueError(f"{runs} was built with other demo settings ({', '.join(f'{k}: {have.get(k)} -> {want[k]}' for k in changed)}); "
                             f"use another --config.runs=DIR or delete {runs}")
        return
    runs.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(want, indent=1))
    os.replace(tmp, stamp)


def _finished(workdir: Path, steps: int) -> bool:
    report = workdir / "training_report.json"
    return report.exists() and json.loads(report.read_text()).get("global_step") == steps


def train_all(c, log=sys.stderr) -> dict[str, Path]:
    """Pretraining, then stages 0–3; returns {name: workdir}."""
    from configs import pretrain_tiny, stages
    from pdt_jax.train import loop

    runs = Path(c.runs)
    data = dict(export_dir=str(runs / "data" / "export"), teacher_notes_cache=str(runs / "teacher_notes"),
                pipeline_documents=int(c.documents), seed=int(c.seed))
    pre = pretrain_tiny.get_config()
    pre.trunk_checkpoint = str(runs / "random_trunk")
    pre.data.update(data)
    pre.train.update(steps=int(c.pretrain_steps), batch_size=int(c.pretrain_batch), seed=int(c.seed),
                     progress=bool(c.progress), lr=float(c.lr), warmup_steps=max(1, int(c.pretrain_steps) // 10),
                     checkpoint_every=max(1, int(c.pretrain_steps) // 3))
    dirs = {"pretrain": runs / "pretrain"}
    t0 = time.perf_counter()
    if not _finished(dirs["pretrain"], int(c.pretrain_steps)):
        say(f"[2/5] trunk pretraining, {c.pretrain_steps} steps -> {dirs['pretrain']}")
        loop.run_stage(pre, dirs["pretrain"], log)
    trunk = dirs["pretrain"] / "export" / "trunk"
    previous = None
    for i, steps in enumerate(c.stage_steps):
        sc = stages.get_config(i, "demo")
        sc.trunk_checkpoint = str(trunk)
        sc.data.update(data)
        sc.train.update(steps=int(steps), batch_size=int(c.stage_batch), seed=int(c.seed), progress=bool(c.progress),
                        lr=float(c.lr), warmup_steps=max(1, int(steps) // 10), checkpoint_every=max(1, int(steps) // 2))
        sc.stage.init_from = str(previous) if previous is not None else "fresh"
        if i < len(c.stage_forms) and c.stage_forms[i]:
            sc.stage.forward.form = str(c.stage_forms[i])
        work = runs / f"stage{i}_{sc.stage.name}"
        dirs[f"stage{i}"] = work
        if not _finished(work, int(steps)):
            say(f"[3/5] stage {i} ({sc.stage.name}), {steps} steps, form {sc.stage.forward.form} -> {work}")
            loop.run_stage(sc, work, log, stages_file=runs / "train_run_stages.json")
        previous = work
    say(f"training done in {time.perf_counter() - t0:.0f} s")
    return dirs


def held_out_prompts(c, out: Path) -> Path:
    from pdt_jax import records as R
    rows = R.read_records(str(Path(c.runs) / "data" / "export" / "test.parquet")).to_pylist()
    if len(rows) < int(c.prompts):
        raise ValueError(f"config field 'prompts': {c.prompts} held-out prompts asked, the test split has {len(rows)}")
    path = out / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:int(c.prompts)]))
    os.replace(tmp, path)
    return path


def infer_all(c, checkpoint: Path, prompts: Path, out: Path) -> dict[str, Path]:
    from pdt_jax.runtime.cli import main as infer
    default_infer = os.path.join(ROOT, "configs", "infer.py")
    import hashlib
    import shutil

    sidecar = hashlib.sha256((checkpoint / "sidecar.safetensors").read_bytes()).hexdigest()
    asked = hashlib.sha256(prompts.read_bytes()).hexdigest()
    dirs = {}
    for name, flags_ in SETTINGS.items():
        d = out / "manifests" / name
        dirs[name] = d
        n = int(c.max_new_tokens) * (3 if name == "sequential" else 1)
        tmp_dir = d.with_name(d.name + ".tmp")
        argv = ["infer", "--config=configs/model/pdt.py:demo", "--checkpoint", str(checkpoint), "--prompts-file",
                str(prompts), "--output", str(tmp_dir), "--max-new-tokens", str(n), "--temperature", "0", *flags_]
        # What the manifests answer: these flags, these prompts, this checkpoint's sidecar.
        stamp = {"argv": argv[1:], "prompts": asked, "sidecar": sidecar}
        if (d / "settings.stamp").exists() and json.loads((d / "settings.stamp").read_text()) == stamp:
            continue
        say(f"[4/5] inference, {name}: {' '.join(flags_) or '(PDT as trained)'}")
        t0 = time.perf_counter()
        # The first run compiles (kept in this process's cache) and is discarded: the manifests'
        # timings, and so tokens/s, are the compiled program's.
        warm = argv[:argv.index("--output") + 1] + [str(out / "manifests" / ".warmup" / name)] + argv[argv.index("--output") + 2:]
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for args in ((warm, argv) if c.warmup else (argv,)):
            rc = infer(args, default_infer)
            if rc != 0:
                raise RuntimeError(f"inference setting {name!r} failed (exit status {rc}): {' '.join(args)}")
        (tmp_dir / "settings.stamp").write_text(json.dumps(stamp, indent=1))
        shutil.rmtree(d, ignore_errors=True)   # a directory of one run only, swapped in whole
        os.replace(tmp_dir, d)
        say(f"    {name}: {time.perf_counter() - t0:.1f} s")
    return dirs


def evaluate_all(c, dirs: dict[str, Path], truth_path: Path) -> dict:
    from pdt_jax import evaluation as ev
    truth = ev.load_truth(str(truth_path))
    per, scores, analyses = {}, {}, {}
    seq = ev.load([str(dirs["sequential"])])
    paired = ev.pair_sequential(seq, seq)
    for name, d in dirs.items():
        items = ev.load([str(d)])
        ev.check_hashing(items + seq)
        scores[name] = ev.score(items, truth)
        rows = [ev.analyze(m, paired.get(m["prompt_index"])) for _, m in items]
        analyses[name] = ev.summarize(rows)
    for metric, key in METRICS.items():
        source = analyses if metric in ("rollback_rate", "tokens_per_s") else scores
        per[metric] = {name: source[name][key] for name in dirs}
    return {"metrics": per, "scores": scores, "summaries": analyses}


def _curves(workdir: Path, tags=("loss", "loss/lm")) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags if t in have}


def plots(train_dirs: dict[str, Path], bus_dir: Path, out: Path) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    fig, axes = plt.subplots(1, len(train_dirs), figsize=(3.2 * len(train_dirs), 2.8), squeeze=False)
    for ax, (name, d) in zip(axes[0], train_dirs.items()):
        for tag, pts in _curves(d, ("loss", "loss/lm", "loss/shared", "loss/notes", "loss/planner")).items():
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=tag)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    files["training_curves"] = str(out / "training_curves.png")
    fig.savefig(files["training_curves"], dpi=110)
    plt.close(fig)

    m = json.loads(sorted(bus_dir.glob("manifest-*.json"))[0].read_text())
    names = list(m["streams"])
    colour = {"committed": "#3a7d44", "rolled back": "#c0392b", "forced": "#e67e22"}
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(names)))
    for e in m.get("stride_commit_events") or []:
        for k, s in enumerate(names):
            state = ("forced" if s in e.get("forced_commit_streams", []) else
                     "rolled back" if s in e.get("rolled_back_streams", []) else "committed")
            ax.barh(k, 1, left=e["stride_id"], color=colour[state], edgecolor="white")
    from matplotlib.patches import Patch
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("round", fontsize=8)
    ax.set_title(f"bus, prompt 0: each stream's rounds ({len(m.get('rollbacks') or [])} rollbacks)", fontsize=8)
    ax.legend(handles=[Patch(color=v, label=k) for k, v in colour.items()], fontsize=7, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.45), frameon=False)
    fig.tight_layout()
    files["timeline"] = str(out / "timeline.png")
    fig.savefig(files["timeline"], dpi=110)
    plt.close(fig)
    return files


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def report(c, result: dict, files: dict, out: Path, timings: dict) -> dict:
    from pdt_jax.train.telemetry import write_json
    per = result["metrics"]
    body = {**per, "settings": {k: " ".join(v) or "(PDT as trained)" for k, v in SETTINGS.items()},
            "prompts": int(c.prompts), "seed": int(c.seed), "timings_s": timings,
            "scores": result["scores"], "plots": {k: os.path.relpath(v, out) for k, v in files.items()},
            "bus_over_ablated_consistency": (per["consistency"]["bus"] / per["consistency"]["ablated"]
                                             if per["consistency"]["ablated"] else None)}
    write_json(out / "report.json", body)
    cols = list(SETTINGS)
    lines = ["# PDT demo: do the streams coordinate through the notes bus?", "",
             f"{c.prompts} held-out prompts of the coordination task, greedy decoding, seed {c.seed}. "
             "Settings: " + "; ".join(f"`{k}` = {body['settings'][k]}" for k in cols) + ".", "",
             "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for metric in METRICS:
        lines.append(f"| {metric} | " + " | ".join(_fmt(per[metric][k]) for k in cols) + " |")
    ratio = body["bus_over_ablated_consistency"]
    lines += ["", f"Consistency with the bus / with the notes hidden: **{_fmt(ratio)}×**.", "",
              "consistency: shared-fact slots (Trade and Legacy reusing the founder, Legacy the year) whose value "
              "equals the Founding part's; contradictions: another value; redundancy: statements of a predicate "
              "another part also states; coverage F1: stated predicates against each part's plan.", "",
              "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
              "![training curves](" + body["plots"]["training_curves"] + ")", "",
              "![timeline](" + body["plots"]["timeline"] + ")", ""]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "report.md")
    return body


def run(c) -> dict:
    check_config(c)
    claim_runs_dir(c)
    t0 = time.perf_counter()
    out = Path(c.out)
    timings = {}
    say(f"[1/5] the coordination dataset ({c.documents} articles) under {c.runs}/data (built once)")
    dirs = train_all(c)
    timings["training"] = time.perf_counter() - t0
    prompts = held_out_prompts(c, out)
    t1 = time.perf_counter()
    manifests = infer_all(c, dirs["stage3"] / "export", prompts, out)
    timings["inference"] = time.perf_counter() - t1
    say("[5/5] scoring and the report")
    result = evaluate_all(c, manifests, Path(c.runs) / "data" / "source" / "coordination_truth.json")
    files = plots(dirs, manifests["bus"], out / "plots")
    timings["total"] = time.perf_counter() - t0
    body = report(c, result, files, out, timings)
    print((out / "report.md").read_text())
    say(f"done in {timings['total']:.0f} s: {out / 'report.md'}, {out / 'report.json'}")
    return body


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    os.chdir(ROOT)
    try:
        run(FLAGS.config)
    except ValueError as e:   # bad settings or inputs: one clear line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)

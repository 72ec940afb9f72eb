"""``make demo`` reduced to minutes (configs/demo.py:reduced): every step runs and every artefact is
there and well-formed — the dataset with its ground truth, the pretrained trunk exported in the
trunk format (and frozen afterwards), the four stage exports, five settings' manifests, the report
and its plots. The quality figures are not checked here (a few steps learn nothing); the
evaluator's numbers are checked on hand-made manifests in tests/test_evaluate.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_demo_writes_every_artefact(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, "launch/demo.py", "--config=configs/demo.py:reduced", f"--config.out={out}",
           f"--config.runs={runs}", "--config.progress=False"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("[1/5]", "[2/5]", "[3/5] stage 0", "[3/5] stage 3", "[4/5] inference, sequential", "[5/5]"):
        assert f"demo: {step}" in proc.stderr                                   # visible progress

    truth = json.loads((runs / "data" / "source" / "coordination_truth.json").read_text())
    assert truth["task"] == "coordination" and len(truth["documents"]) == 60
    # The pretrained trunk is a trunk checkpoint with the task's tokenizer, and it changed.
    from pdt_jax.trunk.checkpoint import load_converted
    _, before = load_converted(str(runs / "random_trunk"))
    tcfg, after = load_converted(str(runs / "pretrain" / "export" / "trunk"))
    assert (runs / "pretrain" / "export" / "trunk" / "tokenizer.json").exists()
    assert not np.allclose(np.asarray(before["embed"]), np.asarray(after["embed"]))
    # The curriculum read that trunk and kept it frozen: each stage exports a sidecar and links the trunk.
    for i, name in enumerate(("planner_pretrain", "stream_bootstrap", "notes_bus", "commit_control")):
        export = runs / f"stage{i}_{name}" / "export"
        assert (export / "sidecar.safetensors").exists()
        assert (export / "trunk").resolve() == (runs / "pretrain" / "export" / "trunk").resolve()
    stages = json.loads((runs / "train_run_stages.json").read_text())
    assert [s["stage_index"] for s in stages] == [0, 1, 2, 3]
    # The shared-fact term is trained and logged on its own in pretraining and stages 1-3.
    for work in ("pretrain", "stage1_stream_bootstrap", "stage2_notes_bus", "stage3_commit_control"):
        metrics = json.loads((runs / work / "training_report.json").read_text())["train_metrics"]
        assert metrics["loss/shared"]["count"] > 0 and metrics["loss/shared"]["last"] > 0, work

    report = json.loads((out / "report.json").read_text())
    settings = {"bus", "ablated", "ablated_all", "gate0", "sequential"}
    for metric in ("consistency", "contradictions", "redundancy", "coverage_f1", "rollback_rate", "tokens_per_s"):
        assert set(report[metric]) == settings, metric
    for name in settings:
        manifests = sorted((out / "manifests" / name).glob("manifest-*.json"))
        assert len(manifests) == 2
        m = json.loads(manifests[0].read_text())
        assert m["schema"]["manifest"] == "pdt-jax-manifest/1"
        assert report["tokens_per_s"][name] > 0
        if name == "ablated":
            assert m["counterfactuals"]["ablate_streams"] == ["all"] and m["counterfactuals"]["ablate_keep_seed"]
        if name == "ablated_all":
            assert not m["counterfactuals"]["ablate_keep_seed"]
        # The report's consistency is score() over these manifests, recomputed here.
        from pdt_jax import evaluation as ev
        ref = ev.score(ev.load([str(out / "manifests" / name)]), ev.load_truth(str(runs / "data" / "source" /
                                                                                 "coordination_truth.json")))
        assert report["consistency"][name] == ref["consistency"]
    md = (out / "report.md").read_text()
    assert "| consistency |" in md and "plots/training_curves.png" in md and "plots/timeline.png" in md
    for png in ("training_curves.png", "timeline.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # A rerun (in this process: no second start-up) finds every step done and only rewrites the
    # report; other build settings on the same runs directory are refused, naming them.
    import contextlib
    import io

    from configs import demo as demo_config
    from launch import demo
    c = demo_config.get_config("reduced")
    c.update(out=str(out), runs=str(runs), progress=False)
    cwd, err = os.getcwd(), io.StringIO()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            again = demo.run(c)
        c.seed = 1
        with pytest.raises(ValueError, match="seed: 0 -> 1"):
            demo.run(c)
    finally:
        os.chdir(cwd)
    assert "[2/5] trunk pretraining" not in err.getvalue() and "[4/5] inference" not in err.getvalue()
    assert again["consistency"] == report["consistency"]

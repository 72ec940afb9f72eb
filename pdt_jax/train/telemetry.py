"""What a training run reports: TensorBoard event files (written with tensorboard's own writer, no
TensorFlow), a console progress bar with ETA, validation metrics, the readiness threshold's
calibration, and the JSON telemetry files of the seed (``train_run_stages.json``,
``training_report.json``, ``agreement_thresholds.json``, ``train_manifest.json``), each written
atomically."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))   # γ candidates 0.05 … 0.95


class TensorBoard:
    """Scalars and text in ``<workdir>/tb`` (read by ``tensorboard --logdir``)."""

    def __init__(self, logdir: Path):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(logdir))

    def _event(self, step: int, value: summary_pb2.Summary.Value):
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=summary_pb2.Summary(value=[value])))

    def scalars(self, step: int, values: dict):
        for tag, v in values.items():
            self._event(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(v)))

    def text(self, step: int, tag: str, text: str):
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        self._event(step, summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                                    metadata=text_metadata.create_summary_metadata(tag, "")))

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class Progress:
    """One console line per update: stage, step/total, loss, tokens/s and ETA."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=sys.stderr):
        self.total, self.label, self.enabled, self.stream = total, label, enabled, stream
        self.t0, self.first = time.perf_counter(), None

    def update(self, step: int, loss: float, tokens_per_s: float):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        done = step - self.first[0]
        rate = done / max(now - self.first[1], 1e-9) if done else 0.0
        eta = (self.total - step) / rate if rate else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        eta_s = "?" if not np.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        print(f"\r{self.label} [{bar}] {step}/{self.total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s ETA {eta_s}",
              end="\n" if step >= self.total else "", file=self.stream, flush=True)


# ---- validation metrics ---------------------------------------------------------------------------

def roc_auc(prob: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN with one class only."""
    prob, label = np.asarray(prob, np.float64), np.asarray(label) > 0.5
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(prob, kind="mergesort")
    ranks = np.empty(len(prob))
    sorted_p = prob[order]
    i = 0
    while i < len(prob):
        j = i
        while j + 1 < len(prob) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion(prob, label, threshold: float) -> dict:
    pred, label = np.asarray(prob) >= threshold, np.asarray(label) > 0.5
    tp, fp = int((pred & label).sum()), int((pred & ~label).sum())
    fn, tn = int((~pred & label).sum()), int((~pred & ~label).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def calibrate_gamma(prob, label) -> dict:
    """The readiness threshold γ: over 0.05 … 0.95, the point with the best F1 of "ready" (ties:
    higher precision, then higher γ — committing less is the safe side). Returns the
    ``agreement_thresholds.json`` object."""
    points = [confusion(prob, label, t) for t in THRESHOLDS]
    best = max(points, key=lambda p: (p["f1"], p["precision"], p["threshold"]))
    return {"agreement_threshold": best["threshold"], "roc_points": points, "selected_point": best,
            "roc_auc": roc_auc(prob, label), "samples": int(len(np.asarray(prob)))}


def validation_metrics(evals: list[dict], coverage_threshold: float = 0.5) -> tuple[dict, dict]:
    """(scalars, calibration) from eval-step outputs: mean loss terms, readiness ROC-AUC and the
    calibrated γ, coverage precision/recall/F1 (a 0.5 label counts as covered)."""
    out = {}
    for k in evals[0]:
        if k == "loss" or k.startswith("loss/"):
            out[k] = float(np.mean([e[k] for e in evals]))
    if "readiness_mask" not in evals[0]:   # trunk pretraining: losses only
        return out, calibrate_gamma(np.zeros(0), np.zeros(0, bool))
    rm = np.concatenate([np.asarray(e["readiness_mask"]).reshape(-1) for e in evals])
    rp = np.concatenate([np.asarray(e["readiness_prob"]).reshape(-1) for e in evals])[rm]
    rl = np.concatenate([np.asarray(e["readiness_label"]).reshape(-1) for e in evals])[rm]
    calibration = calibrate_gamma(rp, rl)
    out["readiness/roc_auc"] = calibration["roc_auc"]
    out["readiness/gamma"] = calibration["agreement_threshold"]
    out["readiness/positive_rate"] = float(rl.mean()) if len(rl) else float("nan")
    if "retry_mask" in evals[0]:   # the retry pairs (losses "retry"): their ROC-AUC on its own (γ: first attempts)
        qm = np.concatenate([np.asarray(e["retry_mask"]).reshape(-1) for e in evals])
        qp = np.concatenate([np.asarray(e["retry_prob"]).reshape(-1) for e in evals])[qm]
        ql = np.concatenate([np.asarray(e["retry_label"]).reshape(-1) for e in evals])[qm]
        out["readiness/retry_roc_auc"] = roc_auc(qp, ql)
        out["readiness/retry_positive_rate"] = float(ql.mean()) if len(ql) else float("nan")
        out["readiness/retry_pairs"] = float(len(ql))
    cm = np.concatenate([np.asarray(e["coverage_mask"]).reshape(-1) for e in evals])
    cp = np.concatenate([np.asarray(e["coverage_prob"]).reshape(-1) for e in evals])[cm]
    cl = np.concatenate([np.asarray(e["coverage_label"]).reshape(-1) for e in evals])[cm]
    c = confusion(cp, cl >= 0.5, coverage_threshold)
    out.update({"coverage/precision": c["precision"], "coverage/recall": c["recall"], "coverage/f1": c["f1"]})
    return out, calibration


# ---- JSON files -----------------------------------------------------------------------------------

def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_default))
    os.replace(tmp, path)


def _default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


def git_info(root: Path) -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"git_sha": run("rev-parse", "HEAD") or None, "git_dirty": bool(run("status", "--porcelain"))}


class History:
    """Per-metric running summary for ``training_report.json``: last, mean, min, max, count."""

    def __init__(self):
        self.stats: dict[str, dict] = {}

    def add(self, metrics: dict):
        for k, v in metrics.items():
            v = float(v)
            s = self.stats.setdefault(k, {"last": v, "sum": 0.0, "min": v, "max": v, "count": 0})
            s["last"], s["sum"], s["count"] = v, s["sum"] + v, s["count"] + 1
            s["min"], s["max"] = min(s["min"], v), max(s["max"], v)

    def summary(self) -> dict:
        return {k: {"last": s["last"], "mean": s["sum"] / max(s["count"], 1), "min": s["min"], "max": s["max"],
                    "count": s["count"]} for k, s in self.stats.items()}

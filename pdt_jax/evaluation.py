"""Analyzers over run manifests (the seed's analyze / summarize / compare), usable on any manifests
that ``launch/infer.py`` or ``launch/replay.py`` wrote (README "Manifest"):

    analyze(m, sequential=None)   one manifest → seconds per round, tokens/s, rolled-back fraction,
                                  speed-up against a sequential manifest of the same prompt, sync
                                  overhead, top-2 margin mean and percentiles, coverage status counts,
                                  gate dwell and oscillations
    summarize(rows)               many analyses → one table (and their totals)
    compare(sequential, parallel) one prompt's sequential and PDT manifests → fidelity (unigram and
                                  bigram F1 of the PDT merged answer against the sequential text)
                                  and timing deltas

Every set of manifests is checked first: a manifest must carry the manifest schema, and all must
share their plan-hashing metadata (D5) — mixing runs whose plan ids mean different things is
refused, naming the files and the field. Pure Python over the JSON: no jax, no model.
"""
from __future__ import annotations

import collections
import glob
import json
import math
import os
from typing import Any, Iterable, Sequence

SCHEMA = "pdt-jax-manifest/1"          # pdt_jax/runtime/manifest.py writes it
HASHING = ("plan_vocab_size", "plan_hash_buckets", "plan_hash_salt")
STATUSES = ("covered", "partial", "missing")


class EvaluationError(ValueError):
    """A manifest cannot be evaluated (the message names the file and the field)."""


# ---- loading and checks ---------------------------------------------------------------------------

def manifest_paths(paths: Iterable[str]) -> list[str]:
    """Files as given; a directory contributes its ``*.json`` files, sorted."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.json")))
            if not found:
                raise EvaluationError(f"{p}: a directory without manifest files (*.json)")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise EvaluationError(f"{p}: no such manifest file or directory")
    if not out:
        raise EvaluationError("no manifests given")
    return out


def load(paths: Iterable[str]) -> list[tuple[str, dict]]:
    """(path, manifest) pairs, each checked (``check_manifest``), all sharing plan hashing."""
    items = []
    for path in manifest_paths(paths):
        try:
            with open(path) as f:
                m = json.load(f)
        except json.JSONDecodeError as e:
            raise EvaluationError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        check_manifest(m, path)
        items.append((path, m))
    check_hashing(items)
    return items


def check_manifest(m: Any, path: str) -> None:
    if not isinstance(m, dict):
        raise EvaluationError(f"{path}: expected one manifest (a JSON object), found {type(m).__name__}")
    schema = (m.get("schema") or {}).get("manifest") if isinstance(m.get("schema"), dict) else None
    if schema != SCHEMA:
        raise EvaluationError(f"{path}: field 'schema.manifest' is {schema!r}, expected {SCHEMA!r}")
    for field, kind in (("streams", dict), ("timings", dict), ("prompt_index", int)):
        if not isinstance(m.get(field), kind):
            raise EvaluationError(f"{path}: field {field!r} missing or not a {kind.__name__}")
    if not isinstance(m["timings"].get("total"), (int, float)):
        raise EvaluationError(f"{path}: field 'timings.total' missing or not a number")
    for name, s in m["streams"].items():
        if not isinstance(s, dict) or not isinstance(s.get("num_tokens"), int):
            raise EvaluationError(f"{path}: field 'streams.{name}.num_tokens' missing or not an integer")


def check_hashing(items: Sequence[tuple[str, dict]]) -> None:
    """All manifests share plan_vocab_size, plan_hash_buckets and plan_hash_salt."""
    first_path, first = items[0]
    for path, m in items:
        for field in HASHING:
            if field not in m:
                raise EvaluationError(f"{path}: plan-hashing field {field!r} missing")
            if m[field] != first[field]:
                raise EvaluationError(f"plan hashing differs: {field!r} is {m[field]!r} in {path} but "
                                      f"{first[field]!r} in {first_path}; refusing to mix their plans")


# ---- analyze --------------------------------------------------------------------------------------

def percentile(xs: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _gate_runs(values: Sequence[float]) -> tuple[list[int], int]:
    """Lengths of runs of an unchanged gate, and direction reversals of its changes."""
    runs, reversals, last_dir = [], 0, 0
    for i, v in enumerate(values):
        if i and v == values[i - 1]:
            runs[-1] += 1
            continue
        runs.append(1)
        if i:
            d = 1 if v > values[i - 1] else -1
            reversals += int(last_dir != 0 and d != last_dir)
            last_dir = d
    return runs, reversals


def tokens_per_s(m: dict) -> float | None:
    total = float(m["timings"]["total"])
    tokens = sum(s["num_tokens"] for s in m["streams"].values())
    return tokens / total if total > 0 else None


def analyze(m: dict, sequential: dict | None = None) -> dict:
    """One manifest's figures (flat; None where the manifest has no such measurement)."""
    t = m["timings"]
    strides = [float(x) for x in t.get("stride_durations") or []]
    tokens = sum(s["num_tokens"] for s in m["streams"].values())
    rollbacks = m.get("rollbacks") or []
    removed = sum(int(r["tokens_removed"]) for r in rollbacks)
    margins = [float(e["top2_margin"]) for e in t.get("per_token") or [] if e.get("top2_margin") is not None]
    statuses = collections.Counter(item["status"] for s in m["streams"].values() if s.get("coverage")
                                   for item in s["coverage"].get("plan_items") or [])
    traces = collections.defaultdict(list)
    for e in sorted(m.get("gate_trace") or [], key=lambda e: e["stride_index"]):
        traces[e["stream"]].append(float(e["value"]))
    runs, reversals = [], 0
    for values in traces.values():
        r, o = _gate_runs(values)
        runs += r
        reversals += o
    out = {
        "prompt_index": m["prompt_index"], "baseline": m.get("baseline"), "streams": len(m["streams"]),
        "rounds": len(strides) if strides else m.get("rounds"),
        "seconds_per_round": sum(strides) / len(strides) if strides else None,
        "total_s": float(t["total"]), "tokens": tokens, "tokens_per_s": tokens_per_s(m),
        "rollbacks": len(rollbacks), "tokens_rolled_back": removed,
        "rollback_fraction": removed / (tokens + removed) if tokens + removed else 0.0,
        "sync_overhead_s": t.get("sync_overhead_s"),
        "top2_margin_mean": sum(margins) / len(margins) if margins else None,
        **{f"top2_margin_p{q}": percentile(margins, q) if margins else None for q in (10, 50, 90)},
        **{f"coverage_{s}": statuses.get(s, 0) for s in STATUSES},
        "gate_dwell_rounds": sum(runs) / len(runs) if runs else None,
        "gate_oscillations": reversals,
        "speedup_vs_sequential": None,
    }
    if sequential is not None:
        base = tokens_per_s(sequential)
        if base and out["tokens_per_s"] is not None:
            out["speedup_vs_sequential"] = out["tokens_per_s"] / base
    return out


def pair_sequential(items: Sequence[tuple[str, dict]], sequential: Sequence[tuple[str, dict]]) -> dict:
    """{prompt_index: sequential manifest}, refusing a sequential run of a different prompt."""
    by_index = {m["prompt_index"]: (p, m) for p, m in sequential}
    out = {}
    for path, m in items:
        if m["prompt_index"] not in by_index:
            continue
        spath, s = by_index[m["prompt_index"]]
        if s.get("prompt") != m.get("prompt"):
            raise EvaluationError(f"{spath} and {path}: prompt {m['prompt_index']} differs between the "
                                  f"sequential and the evaluated manifest")
        out[m["prompt_index"]] = s
    return out


# ---- summarize ------------------------------------------------------------------------------------

COLUMNS = ("prompt_index", "baseline", "rounds", "seconds_per_round", "tokens", "tokens_per_s", "rollback_fraction",
           "speedup_vs_sequential", "top2_margin_mean", "coverage_covered", "coverage_partial", "coverage_missing",
           "gate_dwell_rounds", "gate_oscillations")


def summarize(rows: Sequence[dict]) -> dict:
    """Totals over analyses: tokens, time, tokens/s of all of them, the rolled-back fraction."""
    tokens = sum(r["tokens"] for r in rows)
    removed = sum(r["tokens_rolled_back"] for r in rows)
    total = sum(r["total_s"] for r in rows)
    return {"manifests": len(rows), "tokens": tokens, "total_s": total,
            "tokens_per_s": tokens / total if total > 0 else None,
            "rollback_fraction": removed / (tokens + removed) if tokens + removed else 0.0}


def table(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    """A plain-text table (one row per analysis)."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    cells = [[c for c in columns]] + [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


# ---- compare --------------------------------------------------------------------------------------

def _ngram_f1(reference: list[str], candidate: list[str], n: int) -> float:
    ref = collections.Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
    cand = collections.Counter(tuple(candidate[i:i + n]) for i in range(len(candidate) - n + 1))
    overlap = sum((ref & cand).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * p * r / (p + r)


def compare(sequential: dict, parallel: dict) -> dict:
    """Fidelity of PDT's merged answer to the sequential text (whitespace words, unigram and bigram
    F1) and the timing deltas, for one prompt."""
    if sequential.get("prompt") != parallel.get("prompt"):
        raise EvaluationError("compare: the two manifests answer different prompts")
    seq_text = " ".join(s.get("text", "") for s in sequential["streams"].values())
    par_text = parallel.get("merged_answer") or " ".join(s.get("text", "") for s in parallel["streams"].values())
    ref, cand = seq_text.split(), par_text.split()
    a, b = analyze(sequential), analyze(parallel, sequential)
    return {"prompt_index": parallel["prompt_index"], "unigram_f1": _ngram_f1(ref, cand, 1),
            "bigram_f1": _ngram_f1(ref, cand, 2), "sequential_tokens": a["tokens"], "parallel_tokens": b["tokens"],
            "sequential_total_s": a["total_s"], "parallel_total_s": b["total_s"],
            "total_s_delta": b["total_s"] - a["total_s"], "speedup": b["speedup_vs_sequential"],
            "parallel_rollback_fraction": b["rollback_fraction"]}

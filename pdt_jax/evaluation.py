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
import re
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


# ---- score (the coordination task, data_pipeline/coordination.py) ---------------------------------

SCORE_COLUMNS = ("answers", "consistency", "contradictions", "missing", "redundancy", "coverage_precision",
                 "coverage_recall", "coverage_f1")


def load_truth(path: str) -> dict:
    """The coordination task's ground truth (``coordination_truth.json``), checked field by field."""
    try:
        with open(path) as f:
            truth = json.load(f)
    except FileNotFoundError:
        raise EvaluationError(f"{path}: no such ground-truth file (the coordination dataset writes "
                              f"<work_dir>/source/coordination_truth.json)") from None
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(truth, dict) or truth.get("task") != "coordination":
        raise EvaluationError(f"{path}: field 'task' must be 'coordination'")
    for field, kind in (("headings", list), ("pools", dict), ("phrases", dict), ("shared", dict), ("documents", dict)):
        if not isinstance(truth.get(field), kind):
            raise EvaluationError(f"{path}: field {field!r} missing or not a {kind.__name__}")
    if not all(isinstance(truth["pools"].get(a), list) for a in truth["shared"]):
        raise EvaluationError(f"{path}: field 'pools': a list of values for each shared fact {sorted(truth['shared'])}")
    for attr, spec in truth["shared"].items():
        ok = (attr in truth["pools"] and isinstance(spec, dict) and isinstance(spec.get("intro"), list)
              and isinstance(spec.get("reused_by"), list)
              and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and isinstance(x[1], str)
                      and x[1] in truth["phrases"] and 0 <= x[0] < len(truth["headings"])
                      for x in [spec["intro"], *spec["reused_by"]]))
        if not ok:
            raise EvaluationError(f"{path}: field 'shared.{attr}' needs a pool and 'intro' / 'reused_by' as "
                                  f"[part, predicate] pairs")
    for doc_id, d in truth["documents"].items():
        if not isinstance(d, dict) or not isinstance(d.get("title"), str) or not isinstance(d.get("parts"), list) \
                or len(d["parts"]) != len(truth["headings"]) \
                or not all(isinstance(p, list) and all(k in truth["phrases"] for k in p if isinstance(k, str))
                           and all(isinstance(k, str) for k in p) for p in d["parts"]):
            raise EvaluationError(f"{path}: field 'documents.{doc_id}' needs a title and one key list per heading")
    return truth


def answer_parts(m: dict, headings: Sequence[str]) -> list[str]:
    """The answer's text per part: PDT's streams in order (stream k writes part k); the sequential
    baseline's one text cut at the heading lines (a part whose heading never appears is empty)."""
    streams = list(m["streams"].values())
    if m.get("baseline") != "sequential" and len(streams) == len(headings):
        return [s.get("text", "") for s in streams]
    text = "".join(s.get("text", "") for s in streams)
    starts = []
    for h in headings:
        hit = re.search(r"(?m)^" + re.escape(h) + r"\n", text)
        starts.append(hit.start() if hit else None)
    parts = []
    for i, s in enumerate(starts):
        if s is None:
            parts.append("")
            continue
        later = [t for t in starts if t is not None and t > s]   # the next heading in the text, any part
        parts.append(text[s:min(later) if later else len(text)])
    return parts


def _sentence_with(text: str, phrase: str) -> str:
    """The sentence of ``text`` that holds ``phrase`` ('' when none does)."""
    at = text.find(phrase)
    if at < 0:
        return ""
    start = max(text.rfind(".", 0, at), text.rfind("\n", 0, at)) + 1
    end = text.find(".", at + len(phrase))
    return text[start:end if end >= 0 else len(text)]


def _first_value(text: str, pool: Sequence) -> str | None:
    best = None
    for v in pool:
        hit = re.search(r"(?<!\w)" + re.escape(str(v)) + r"(?!\w)", text)
        if hit and (best is None or hit.start() < best[0]):
            best = (hit.start(), str(v))
    return None if best is None else best[1]


def score_answer(m: dict, truth: dict, path: str = "<manifest>") -> dict:
    """One answer against the ground truth of the document its prompt names. Counts:
    * shared-fact slots (a part that must reuse a fact another part introduces, in the sentence
      of a given predicate): ``consistent`` (the value from the fact's pool in that sentence
      equals the one in the introducing sentence), ``contradicted`` (another value, or one the
      introducing part never stated), ``missing`` (no such sentence, or no value in it);
    * ``statements`` (predicate phrases stated, per part) and ``repeated`` (statements of a
      predicate another part also states: the must-not-repeat facts);
    * coverage against the plan: stated predicates in their planned part (tp), elsewhere (fp),
      planned but not stated (fn)."""
    prompt = m.get("prompt")
    doc = next((d for d in truth["documents"].values() if isinstance(prompt, str)
                and re.search(r"(?<!\w)" + re.escape(d["title"]) + r"(?!\w)", prompt)), None)
    if doc is None:
        raise EvaluationError(f"{path}: its prompt {prompt!r} names no document of the ground truth")
    parts = answer_parts(m, truth["headings"])
    out = collections.Counter()
    phrases = truth["phrases"]
    for attr, spec in truth["shared"].items():
        pool = truth["pools"][attr]
        part, key = spec["intro"]
        intro = _first_value(_sentence_with(parts[part], phrases[key]), pool)
        for k, key in spec["reused_by"]:
            value = _first_value(_sentence_with(parts[k], phrases[key]), pool)
            out["slots"] += 1
            out["missing" if value is None else "consistent" if value == intro else "contradicted"] += 1
    stated = [{key for key, phrase in truth["phrases"].items() if phrase in part} for part in parts]
    for i, keys in enumerate(stated):
        planned = set(doc["parts"][i])
        out["statements"] += len(keys)
        out["repeated"] += sum(1 for key in keys if any(key in other for j, other in enumerate(stated) if j != i))
        out["tp"] += len(keys & planned)
        out["fp"] += len(keys - planned)
        out["fn"] += len(planned - keys)
    return dict(out)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def score(items: Sequence[tuple[str, dict]], truth: dict) -> dict:
    """Totals over answers (one manifest each): consistency / contradiction / missing rates over
    the shared-fact slots, redundancy (repeated / all statements), coverage precision, recall and
    F1 (micro-averaged over parts)."""
    total = collections.Counter()
    for path, m in items:
        total.update(score_answer(m, truth, path))
    p, r = _ratio(total["tp"], total["tp"] + total["fp"]), _ratio(total["tp"], total["tp"] + total["fn"])
    f1 = 2 * p * r / (p + r) if p and r else (0.0 if r is not None else None)
    return {"answers": len(items), "slots": total["slots"], "consistency": _ratio(total["consistent"], total["slots"]),
            "contradictions": _ratio(total["contradicted"], total["slots"]),
            "missing": _ratio(total["missing"], total["slots"]),
            "redundancy": _ratio(total["repeated"], total["statements"]), "statements": total["statements"],
            "coverage_precision": p, "coverage_recall": r, "coverage_f1": f1}

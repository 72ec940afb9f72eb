"""The run manifest: one JSON document per prompt, built here for PDT runs and the sequential
baseline alike (the schema is documented once, in the README's "Manifest" section).

Deterministic fields (what a replay reproduces exactly): streams (token ids, text, coverage,
latest note version, gate), rollbacks, stride_commit_events, cadence_events, gate_trace, plan,
merged_answer, committed_blocks_by_stream. Timings and memory are measurements and differ run to run.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess

import numpy as np

from pdt_jax.runtime.cadence import every_by_stream
from pdt_jax.runtime.orchestrator import token_records

SCHEMA = "pdt-jax-manifest/1"
COVERAGE_THRESHOLD, COVERAGE_BAND = 0.4, 0.2
DETERMINISTIC_FIELDS = ("streams", "rollbacks", "stride_commit_events", "cadence_events", "gate_trace", "plan",
                        "merged_answer", "committed_blocks_by_stream")


@functools.lru_cache(maxsize=1)
def _git_info() -> tuple:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode == 0:
            return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return None, None


def git_info() -> dict:
    """The checkout that produced an artefact (read once per process)."""
    sha, dirty = _git_info()
    return {"git_sha": sha, "git_dirty": dirty}


def _status(p: float) -> str:
    if p >= COVERAGE_THRESHOLD + COVERAGE_BAND:
        return "covered"
    if p <= COVERAGE_THRESHOLD - COVERAGE_BAND:
        return "missing"
    return "partial"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def sequential_record(tokens, finished, total_s: float) -> dict:
    """The run record of the sequential baseline (one row per prompt, one stream ``seq``), in the
    orchestrator's shape, so that one builder writes both kinds of manifest."""
    P = len(tokens)
    per_tok = total_s / max(1, sum(len(t) for t in tokens))
    log = [(0, p, "seq", 0, list(t), None, None, False, False, bool(f), per_tok)  # no margins, no readiness
           for p, (t, f) in enumerate(zip(tokens, finished))]
    return {"start": None, "committed": [list(t) for t in tokens], "finished": np.asarray(finished, bool),
            "blocks": [[{"stride_id": 0, "committed": True, "forced": False, "retries": 0, "token_ids": list(t)}]
                       for t in tokens],
            "coverage": [None] * P, "notes_versions": np.zeros(P, np.int64), "gate": np.zeros(P),
            "token_log": log, "rollbacks": [], "stride_commit_events": [], "cadence_events": [], "gate_trace": [],
            "stride_durations": [], "sync_overhead": [], "memory": [],
            "rounds": max((len(t) for t in tokens), default=0),  # one decode step per token
            "bootstrap_s": 0.0, "total_s": total_s, "run_ahead": {"dispatched": 0, "accepted": 0, "reverted": 0}}


def build(rec: dict, *, prompts, stream_names, opts, model_cfg, decode, catalogs=None, extra=None,
          baseline: str | None = None) -> list[dict]:
    """Per-prompt manifests from a run record (``Orchestrator.run``, or ``sequential_record`` with
    ``baseline='sequential'``). ``opts`` are resolved RuntimeOptions."""
    K = len(stream_names)
    sc = model_cfg.sidecar
    eos = set(model_cfg.trunk.eos_token_ids)
    pdt_run = baseline is None
    texts: dict[int, str] = {}
    token_text = lambda t: texts[t] if t in texts else texts.setdefault(t, decode([t]))
    per_token, _ = token_records(rec, token_text, opts.log_margins)
    start = rec["start"]
    manifests = []
    for p, prompt in enumerate(prompts):
        catalog = (catalogs or [None] * len(prompts))[p] or []
        plan_ids = start["plan_ids"][p] if pdt_run else np.zeros(0, np.int32)
        streams, committed_blocks = {}, {}
        for k, name in enumerate(stream_names):
            b = p * K + k
            ids = rec["committed"][b]
            text_ids = [t for t in ids if t not in eos]
            cov = rec["coverage"][b]
            coverage = None
            if pdt_run:
                cov_logits = np.zeros(sc.planner_slots) if cov is None else np.asarray(cov, np.float64)
                probs = 1 / (1 + np.exp(-cov_logits))
                items = [{"index": i, "plan_item_id": int(plan_ids[i]), "probability": float(probs[i]),
                          "status": _status(float(probs[i])),
                          **({"text": catalog[i]["text"], "stream": catalog[i].get("stream")} if i < len(catalog) else {})}
                         for i in range(len(plan_ids)) if plan_ids[i] != 0]
                coverage = {"latest_logits": cov_logits.tolist(), "latest_probabilities": probs.tolist(),
                            "threshold": COVERAGE_THRESHOLD, "partial_band": COVERAGE_BAND,
                            "plan_ids": plan_ids.tolist(), "plan_mask": (plan_ids != 0).tolist(), "plan_items": items}
            streams[name] = {
                "text": decode(text_ids), "token_ids": ids, "token_texts": [token_text(t) for t in ids],
                "num_tokens": len(ids), "finished_eos": bool(rec["finished"][b]),
                "latest_version": int(rec["notes_versions"][b]), "gate": float(rec["gate"][b]), "coverage": coverage}
            committed_blocks[name] = [dict(blk, stream_id=name, text=decode(blk["token_ids"])) for blk in rec["blocks"][b]]
        order = []
        for item in catalog:  # merged answer by plan order (first appearance of each stream)
            if item.get("stream") in stream_names and item["stream"] not in order:
                order.append(item["stream"])
        order += [n for n in stream_names if n not in order]
        merged = "\n\n".join(streams[n]["text"] for n in order if streams[n]["text"])
        pick = lambda events: [e for e in events if e.get("prompt_index", p) == p]
        timings = {"bootstrap": rec["bootstrap_s"], "total": rec["total_s"], "stride_durations": rec["stride_durations"],
                   "per_token": pick(per_token), "run_ahead": dict(rec["run_ahead"])}
        if opts.sync_profile:
            timings["stride_sync_durations"] = rec["sync_overhead"]
            timings["sync_overhead_s"] = float(sum(rec["sync_overhead"]))
        cf = opts.counterfactuals
        m = {
            "schema": {"manifest": SCHEMA, "notes": "2.0"},
            "prompt": prompt, "prompt_index": p, "baseline": baseline,
            "config": {
                "stride_B": sc.block_size, "commit_L": sc.commit_horizon, "read_lag_delta": opts.lag,
                "max_snapshots_K": sc.bus_capacity, "topology": "all_to_all",
                "gate_g": opts.gate_g if pdt_run else 0.0, "alpha": opts.alpha if pdt_run else 0.0,
                "tau": opts.readiness_threshold, "max_retries": opts.max_retries,
                "max_new_tokens": opts.max_new_tokens, "rng_seed": opts.seed, "run_ahead": opts.run_ahead and pdt_run,
                "M_by_stream": every_by_stream(opts.cadence, stream_names, sc.block_size),
                "gate_annealing": dataclasses.asdict(opts.gate_annealing),
                "cadence_policy": dataclasses.asdict(opts.cadence),
                "decode": {"temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k},
                "mesh": dict(model_cfg.mesh),
            },
            "instrumented_layers": list(sc.layers_for(model_cfg.trunk)) if pdt_run else [],
            "timings": timings, "streams": streams,
            "gate_trace": pick(rec["gate_trace"]), "cadence_events": pick(rec["cadence_events"]),
            "rollbacks": pick(rec["rollbacks"]), "stride_commit_events": pick(rec["stride_commit_events"]),
            "committed_blocks_by_stream": committed_blocks, "merged_answer": merged, "rounds": rec["rounds"],
            "plan": None if not pdt_run else {
                "source": start["plan_source"], "planner_slots": sc.planner_slots, "slot_ids": plan_ids.tolist(),
                "mask": (plan_ids != 0).tolist(), "logits_shape": list(start["planner_logits"].shape[1:]),
                "catalog": catalog},
            **sc.hashing_metadata(),
            "counterfactuals": None if not pdt_run else {
                "swap_pairs": [list(x) for x in cf.swap], "shuffle_streams": list(cf.shuffle),
                "freeze_streams": list(cf.freeze), "ablate_streams": list(cf.ablate),
                "ablate_keep_seed": bool(cf.ablate_keep_seed),
                "stale_overrides": {s: d for s, d in cf.stale}, "tag": cf.tag},
            "counterfactual_tags": [cf.tag] if cf.tag and pdt_run else [],
            **git_info(),
        }
        if opts.memory_report:
            entries = rec["memory"]
            m["memory"] = {"entries": entries,
                           "max_tracked_bytes": max((e["rss_bytes"] for e in entries), default=0),
                           "max_estimate_bytes": max((e["estimate_bytes"] for e in entries), default=0)}
        if extra:
            m.update(extra)
        manifests.append(_jsonable(m))
    return manifests


def deterministic_view(manifest: dict) -> dict:
    """The fields a replay must reproduce bit for bit (timings excluded)."""
    return {k: manifest[k] for k in DETERMINISTIC_FIELDS if k in manifest}

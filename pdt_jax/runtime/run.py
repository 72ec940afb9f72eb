"""Running PDT (or the sequential baseline) on prompts: from strings to manifests. The launcher
``launch/infer.py`` parses configs and flags and calls these two functions."""
from __future__ import annotations

import time

import numpy as np

from pdt_jax import records
from pdt_jax.runtime import manifest as manifest_lib
from pdt_jax.runtime.device import DeviceEngine
from pdt_jax.runtime.orchestrator import Orchestrator, token_records
from pdt_jax.runtime.replay import RecordingEngine
from pdt_jax.trunk.api import bucket, pad_batch


def plan_ids_for(catalog, cfg) -> np.ndarray:
    sc = cfg.sidecar
    hashing = records.PlanHashing(sc.plan_vocab_size, sc.plan_vocab_size, sc.plan_hash_salt)
    ids = np.zeros(sc.planner_slots, np.int32)
    for i, item in enumerate(catalog):
        ids[i] = records.plan_item_id(item["text"], hashing)
    return ids


def padded_prompts(prompts, model_cfg, mesh) -> list:
    """The prompts, repeated at the end up to a multiple of the mesh's row groups (the ``batch``
    rule: prompts are never split across devices); the extra ones get no manifest."""
    groups = model_cfg.rules.size("batch", mesh)
    extra = (-len(prompts)) % groups
    return list(prompts) + [prompts[-1]] * extra


def run_pdt(model_cfg, trunk_params, sidecar_params, tokenizer, prompts, opts, *, stream_prefixes=None,
            seed_texts=None, catalog=None, replay_dir=None, replay_chunk_size=256, system=None, engine=None,
            extra=None, on_event=None, mesh=None) -> list[dict]:
    """P prompts × K streams in one batch on the model's mesh (or ``mesh``). Returns one manifest
    per prompt."""
    opts = opts.resolve(model_cfg.sidecar)
    names = model_cfg.sidecar.stream_names
    if engine is not None:
        mesh = engine.mesh
    mesh = mesh if mesh is not None else model_cfg.make_mesh()
    batch = padded_prompts(prompts, model_cfg, mesh)
    P = len(batch)
    prefixes = stream_prefixes or {}
    rows = [tokenizer.prompt(p, system=system, prefix=prefixes.get(n, "")) for p in batch for n in names]
    ids, lengths = pad_batch(rows, pad_id=tokenizer.pad_id)
    T = bucket(ids.shape[1], 16)
    ids = np.pad(ids, ((0, 0), (0, T - ids.shape[1])), constant_values=tokenizer.pad_id)
    max_len = bucket(T + opts.max_new_tokens + model_cfg.sidecar.block_size)
    if max_len > model_cfg.trunk.max_position_embeddings:
        raise ValueError(f"prompt + --max-new-tokens needs {max_len} positions; the model has "
                         f"{model_cfg.trunk.max_position_embeddings}")
    if engine is None:
        engine = DeviceEngine(model_cfg, trunk_params, sidecar_params, opts, P, max_len, mesh=mesh)
    elif getattr(engine, "max_len", max_len) < min(max_len, T + opts.max_new_tokens):
        # A KV cache shorter than prompt + new tokens would wrap onto the prompt's first positions.
        raise ValueError(f"engine: its KV cache holds {engine.max_len} positions; the prompts ({T} padded "
                         f"tokens) and --max-new-tokens {opts.max_new_tokens} need {T + opts.max_new_tokens}")
    device = engine
    if replay_dir:
        engine = RecordingEngine(engine, replay_dir, replay_chunk_size)
    plan_ids = None if not catalog else np.broadcast_to(plan_ids_for(catalog, model_cfg), (P, model_cfg.sidecar.planner_slots)).copy()
    seed_vectors = None
    if seed_texts:
        texts = [seed_texts.get(n, "") for n in names]
        if any(not t for t in texts):
            missing = [n for n, t in zip(names, texts) if not t]
            raise ValueError(f"seed texts: streams {missing} have none; give a seed for every stream {list(names)}")
        sid, slen = pad_batch([tokenizer.encode(t) or [tokenizer.pad_id] for t in texts], pad_id=tokenizer.pad_id)
        vec = device.seed_vectors(sid, slen)                                   # [K, N]
        seed_vectors = np.broadcast_to(vec, (P,) + vec.shape).copy()
    orch = Orchestrator(engine, names, opts, model_cfg.sidecar.block_size, model_cfg.trunk.eos_token_ids,
                        decode=tokenizer.decode, bus_capacity=model_cfg.sidecar.bus_capacity)

    def on_round(entries):  # --stream-jsonl: each round's tokens as soon as the round is committed
        for e in token_records(entries, orch.token_text, opts.log_margins)[1]:
            if e["prompt_index"] < len(prompts):
                on_event(e)

    rec = orch.run(ids, lengths, plan_ids, seed_vectors, on_round=on_round if on_event else None)
    catalogs = [catalog or [] for _ in prompts]
    out = manifest_lib.build(rec, prompts=prompts, stream_names=names, opts=opts, model_cfg=model_cfg,
                             decode=tokenizer.decode, catalogs=catalogs, extra=extra)
    if replay_dir:
        context = {"prompts": list(prompts), "num_prompts": P, "streams": list(names), "options": opts.to_mapping(),
                   "model": {"notes_dim": model_cfg.sidecar.notes_dim, "hidden_size": model_cfg.trunk.hidden_size,
                             "lm_vocab_size": model_cfg.trunk.vocab_size, "trunk": model_cfg.trunk.to_mapping(),
                             "sidecar": model_cfg.sidecar.to_mapping(), "mesh": dict(model_cfg.mesh)},
                   "tokenizer": tokenizer.source, **model_cfg.sidecar.hashing_metadata(), **manifest_lib.git_info(),
                   "extra": extra or {}}
        engine.finish(context, catalogs)
        for m in out:
            m["replay_artifact"] = replay_dir
    return out


def run_sequential(model_cfg, trunk, tokenizer, prompts, opts, *, system=None, extra=None) -> list[dict]:
    """The sequential baseline: one stream per prompt, the trunk alone, cached decoding. Its
    manifest has the PDT schema (one stream named ``seq``, no notes, no rollbacks)."""
    opts = opts.resolve(model_cfg.sidecar)
    rows = [tokenizer.prompt(p, system=system) for p in prompts]
    t0 = time.perf_counter()
    out = trunk.generate(rows, opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                         top_k=opts.top_k, seed=opts.seed, eos_ids=trunk.cfg.eos_token_ids)
    rec = manifest_lib.sequential_record(out.tokens, out.finished, time.perf_counter() - t0)
    return manifest_lib.build(rec, prompts=prompts, stream_names=["seq"], opts=opts, model_cfg=model_cfg,
                              decode=tokenizer.decode, extra=extra, baseline="sequential")

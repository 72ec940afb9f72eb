"""The train step of a stage: tokens/s, step time and compile time, and what freezing the trunk saves.

    python bench/train_step.py [--config=configs/stage2.py:small] [--seq=256] [--json out.json]

Two steps of the same stage config on the same synthetic batch (random trunk and sidecar: speed
does not depend on the values), timed interleaved:
  * ``sidecar``: the stage's trainable set (the trunk frozen: no trunk weight gradient, no AdamW
    state for it) — what training runs;
  * ``full``: the same step with every trunk parameter trainable too (stage 4's backward).
Reported: compile seconds, best step seconds, tokens/s (all rows' tokens), and full / sidecar.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from bench._timing import best_of_interleaved  # noqa: E402
from bench._train import synthetic_batch  # noqa: E402
from pdt_jax import config_files  # noqa: E402
from pdt_jax.runtime.cli import init_params  # noqa: E402
from pdt_jax.train import state as state_lib  # noqa: E402
from pdt_jax.train import step as step_lib  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/stage2.py:small")
    ap.add_argument("--seq", type=int, default=256, help="row length (prompt + target)")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    config = config_files.load(args.config, overrides)
    cfg = config_files.pdt_config(config.model)
    mesh = cfg.make_mesh()
    trunk, side = init_params(cfg, 0, mesh, init_std=0.05)
    params = {"sidecar": side, "trunk": trunk}
    tr, st = config.train, config.stage
    P, A = int(tr.batch_size), int(tr.grad_accum)
    kd = int(config.data.kd_context) if float(st.losses.kd) > 0 else 0
    batch = synthetic_batch(cfg, P, args.seq, args.prompt, A, kd)
    tokens = int(batch["lengths"].sum())
    chosen = state_lib.trainable_paths(params, tuple(st.trainable))
    sets = {"sidecar": chosen, "full": state_lib.trainable_paths(params, tuple(st.trainable) + (r"trunk/.*",))}
    tx, sched = state_lib.optimizer(tr)
    runs, compile_s = {}, {}
    for name, paths in sets.items():
        static = step_lib.StepStatic.from_stage(st, cfg, paths, cfg.train_moe_impl(mesh))
        own = jax.tree.map(lambda x: x.copy(), params)   # the step donates its state: no sharing
        state = state_lib.create(own, paths, tx, 0)
        steps = step_lib.Steps(static, tx, sched, jax.eval_shape(lambda s=state: s), mesh, cfg.rules)
        state = jax.device_put(state, steps.state_sharding)
        t0 = time.perf_counter()
        state, m = steps.train(state, batch)
        jax.block_until_ready(m)
        compile_s[name] = time.perf_counter() - t0
        runs[name] = [steps, state]

    def timed(name):
        def fn():
            steps, state = runs[name]
            state, m = steps.train(state, batch)
            jax.block_until_ready(m["loss"])
            runs[name][1] = state
        return fn
    best = best_of_interleaved({n: timed(n) for n in runs}, args.repeats)
    r = {"config": args.config, "overrides": overrides, "rows": P * A * cfg.K, "seq": args.seq, "tokens_per_step": tokens,
         "form": st.forward.form, "passes": int(st.forward.passes), "kd": bool(kd),
         "trainable_sidecar_params": int(sum(x.size for p, x in state_lib.select(params, sets["sidecar"]).items())),
         "trainable_full_params": int(sum(x.size for p, x in state_lib.select(params, sets["full"]).items())),
         "device": jax.devices()[0].device_kind, "devices": len(jax.devices())}
    for name in runs:
        r[f"{name}_compile_s"] = compile_s[name]
        r[f"{name}_step_s"] = best[name]
        r[f"{name}_tokens_per_s"] = tokens / best[name]
    r["full_over_sidecar_step_time"] = best["full"] / best["sidecar"]
    print(f"train step, {args.config}: {r['rows']} rows x {args.seq} tokens ({tokens} tokens/step), form "
          f"{r['form']}, KD {'on' if kd else 'off'}, {r['device']} x{r['devices']}")
    for name in runs:
        print(f"  {name:<8} compile {compile_s[name]:6.1f} s   step {best[name] * 1e3:8.1f} ms   "
              f"{tokens / best[name]:9.0f} tok/s")
    print(f"  full-trunk backward / sidecar-only = {r['full_over_sidecar_step_time']:.2f}x step time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()

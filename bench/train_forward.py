"""How far the multi-pass training forward drifts from the exact one, and what each costs.

    python bench/train_forward.py [--config=configs/model/pdt.py:small] [--sidecar stage2=DIR ...] \
        [--target=48] [--json out.json]

The exact form (``train/forward.forward_exact``) runs the runtime's rounds and equals inference;
the ``passes`` form with n passes is exact through round n·(Δ + 1) − 1. For each sidecar (default
``acting``: a random one whose SNC and adapters act at gate sigmoid(2) — an untrained sidecar's
zero SNC output would show no drift at all; ``name=DIR``: a trained export, e.g. each curriculum
stage's), each lag Δ ∈ {0, 1, 2} and n ∈ {2, 3, 4}, on one prompt × K streams of random tokens:
  * the largest |logit difference| to the exact form over the target, the share of positions
    whose argmax agrees, and the last round that is exact (difference ≤ 1e-4) vs n·(Δ + 1) − 1;
  * the time of one forward + backward (LM CE, gradient of the sidecar) of each form, and the
    ratio exact / passes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench._timing import best_of_interleaved  # noqa: E402
from pdt_jax import config_files  # noqa: E402
from pdt_jax import model as pdt  # noqa: E402
from pdt_jax.runtime.cli import init_params  # noqa: E402
from pdt_jax.sidecar.checkpoint import load_sidecar  # noqa: E402
from pdt_jax.sidecar.params import acting  # noqa: E402
from pdt_jax.train import forward as train_forward  # noqa: E402

LAGS, PASSES = (0, 1, 2), (2, 3, 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/pdt.py:small")
    ap.add_argument("--sidecar", action="append", default=[], help="name=DIR (an export with sidecar.safetensors)")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--target", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    cfg = config_files.pdt_config(config_files.load(args.config, overrides))
    mesh = cfg.make_mesh()
    trunk, fresh = init_params(cfg, 0, mesh, init_std=0.05)
    sidecars = {"acting": acting(fresh, jax.random.key(7))} if not args.sidecar else {}
    for spec in args.sidecar:
        name, _, path = spec.partition("=")
        sidecars[name] = load_sidecar(os.path.join(path, "sidecar.safetensors"), cfg.trunk, cfg.sidecar)
    K, tau = cfg.K, cfg.sidecar.block_size
    T = args.prompt + args.target
    rng = np.random.default_rng(0)
    # Random text without end-of-sequence ids (a target ends at its EOS; the exact form, like the
    # runtime, stops a row's round at one).
    vocab = np.setdiff1d(np.arange(1, cfg.trunk.vocab_size), np.asarray(cfg.trunk.eos_token_ids or (), np.int64))
    batch = {"tokens": rng.choice(vocab, (1, K, T)).astype(np.int32),
             "lengths": np.full((1, K), T, np.int32), "target_start": np.full((1, K), args.prompt, np.int32),
             "plan_ids": rng.integers(1, cfg.sidecar.plan_vocab_size, (1, cfg.sidecar.planner_slots)).astype(np.int32)}
    s, rounds = args.prompt, args.target // tau
    pos = np.arange(s - 1, T - 1)                       # positions that predict target tokens

    exact = jax.jit(lambda t, sd, b, lag: train_forward.forward_exact(t, sd, b, cfg=cfg, lag=lag)["lm_logits"])
    passes_fns = {}
    r = {"config": args.config, "overrides": overrides, "target_tokens": args.target, "tau": tau,
         "device": jax.devices()[0].device_kind}
    print(f"training forward drift, {args.config}: 1 prompt x {K} streams, {args.prompt} + {args.target} tokens")
    for name, side in sidecars.items():
        for lag in LAGS:
            c = dataclasses.replace(cfg, sidecar=dataclasses.replace(cfg.sidecar, lag=lag))
            ref = np.asarray(exact(trunk, side, batch, jnp.int32(lag)))[:, pos]
            line = []
            for n in PASSES:
                key = (lag, n)
                if key not in passes_fns:
                    passes_fns[key] = jax.jit(lambda t, sd, b, c=c, n=n: pdt.forward_train(t, sd, b, cfg=c, passes=n)[
                        "lm_logits"])
                got = np.asarray(passes_fns[key](trunk, side, batch))[:, pos]
                diff = np.abs(got - ref).max(-1)                                  # [B, target]
                per_round = diff[:, :rounds * tau].reshape(diff.shape[0], rounds, tau).max(axis=(0, 2))
                bad = np.nonzero(per_round > 1e-4)[0]
                exact_through = int(bad[0]) - 1 if len(bad) else rounds - 1
                tag = f"{name}_lag{lag}_passes{n}"
                r[f"{tag}_max_logit_diff"] = float(diff.max())
                r[f"{tag}_argmax_agree"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
                r[f"{tag}_exact_through_round"] = exact_through
                r[f"{tag}_predicted_exact_through"] = min(n * (lag + 1) - 1, rounds - 1)
                line.append(f"n={n}: max|dlogit| {diff.max():.3g}, argmax {100 * r[f'{tag}_argmax_agree']:.1f}%, "
                            f"exact through round {exact_through} (predicted {r[f'{tag}_predicted_exact_through']})")
            print(f"  {name} lag {lag}: " + "; ".join(line))

    # Cost of forward + backward (LM CE, gradient of the sidecar) of each form.
    side = next(iter(sidecars.values()))
    tokens = jnp.asarray(batch["tokens"])

    def grad_fn(forward):
        def loss(sd):
            logits = forward(sd)
            lp = jax.nn.log_softmax(logits[:, s - 1:T - 1], axis=-1)
            return -jnp.take_along_axis(lp, tokens.reshape(K, T)[:, s:, None], axis=-1).mean()
        return jax.jit(jax.grad(loss))
    fns = {"exact": grad_fn(lambda sd: train_forward.forward_exact(trunk, sd, batch, cfg=cfg)["lm_logits"])}
    for n in PASSES:
        fns[f"passes{n}"] = grad_fn(lambda sd, n=n: pdt.forward_train(trunk, sd, batch, cfg=cfg, passes=n)["lm_logits"])
    for f in fns.values():
        jax.block_until_ready(f(side))
    best = best_of_interleaved({k: (lambda f=f: jax.block_until_ready(f(side))) for k, f in fns.items()}, args.repeats)
    for k, v in best.items():
        r[f"fwd_bwd_{k}_s"] = v
    for n in PASSES:
        r[f"exact_over_passes{n}"] = best["exact"] / best[f"passes{n}"]
    print("  forward + backward: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in best.items())
          + f"; exact / passes2 = {r['exact_over_passes2']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()

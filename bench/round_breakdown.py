"""Where a PDT round's time goes: the round program timed whole, and with parts of the sidecar
removed (stubbed out before tracing), next to the bare batched trunk at the same cadence.

    python bench/round_breakdown.py --config=configs/model/pdt.py:tiny [--json out.json]

Each variant decodes ``--rounds`` rounds of τ tokens for 1 prompt × K streams, dispatched back to
back (the device never waits for the host, as with run-ahead); the figure is µs per round,
dispatch included. The stubbed variants compute something else than PDT: they exist only to
attribute cost, and a difference between two variants is what the removed part costs.
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench._timing import best_of_interleaved  # noqa: E402
from pdt_jax import config_files  # noqa: E402
from pdt_jax import model as pdt  # noqa: E402
from pdt_jax.runtime import device as device_lib  # noqa: E402
from pdt_jax.runtime import program as program_lib  # noqa: E402
from pdt_jax.runtime.options import RuntimeOptions  # noqa: E402
from pdt_jax.sidecar import heads, hooks  # noqa: E402
from pdt_jax.tokenizer import Tokenizer  # noqa: E402
from pdt_jax.trunk import Trunk  # noqa: E402
from pdt_jax.trunk.params import init_trunk  # noqa: E402


def slug(name: str) -> str:
    """A variant's name as a JSON key: 'without coverage/note heads' -> 'without_coverage_note_heads'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@contextlib.contextmanager
def patched(*changes):
    """(object, attribute, replacement) triples, undone on exit."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def stubs(cfg):
    no_snc = [(hooks.SidecarHooks, "after_attention", lambda self, layer, h, ctx: h),
              (hooks.HookContext, "with_snc_kv", lambda self, h: self)]
    no_adapters = [(hooks.SidecarHooks, "after_mlp", lambda self, layer, h, ctx: h)]
    no_heads = [(program_lib, "coverage_step", lambda p, items, h, valid, small, n: (
                    jnp.zeros((h.shape[0], items.shape[1]), jnp.float32), small)),
                (heads, "readiness_logit", lambda p, pooled, *a: jnp.zeros(pooled.shape[0], jnp.float32)),
                (heads, "note_head", lambda p, pooled: jnp.zeros((pooled.shape[0], cfg.sidecar.notes_dim), jnp.float32))]
    no_margins = [(program_lib, "top2_margin", lambda logits: jnp.zeros(logits.shape[0], jnp.float32))]
    return {"full round": [], "without SNC": no_snc, "without adapters": no_adapters,
            "without coverage/note/readiness heads": no_heads, "without top-2 margins": no_margins,
            "without all of these": no_snc + no_adapters + no_heads + no_margins}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/pdt.py:tiny")
    ap.add_argument("--rounds", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)  # --config.x=y overrides go to config_flags

    cfg = config_files.pdt_config(config_files.load(args.config, overrides))
    cfg = dataclasses.replace(cfg, trunk=cfg.trunk.replace(eos_token_ids=()))
    trunk_p = init_trunk(cfg.trunk, jax.random.key(0), 0.05)
    side_p = pdt.init_sidecar(cfg, jax.random.key(1))
    tok = Tokenizer.tiny()
    K, tau, R = cfg.K, cfg.sidecar.block_size, args.rounds
    row = tok.prompt("Tell me some facts about Velmora.")
    ids = np.array([row] * K, np.int32)
    lengths = np.full(K, ids.shape[1], np.int32)
    max_len = 64 * ((ids.shape[1] + R * tau + tau + 63) // 64)
    opts = RuntimeOptions(max_new_tokens=R * tau, readiness_threshold=0.0)
    active, remaining, gate = np.ones(K, bool), np.full(K, tau, np.int32), np.ones(K, np.float32)

    fns = {}
    for name, changes in stubs(cfg).items():
        with patched(*changes):
            program_lib.programs.cache_clear()  # trace this variant's programs now, with the stubs
            engine = device_lib.DeviceEngine(cfg, trunk_p, side_p, opts, 1, max_len)
            engine.start(ids, lengths, None, None)
            engine.submit(0, active, remaining, gate)()

        def rounds(engine=engine):
            engine.start(ids, lengths, None, None)
            t0 = time.perf_counter()
            for v in range(R):
                fetch = engine.submit(v, active, remaining, gate)
            fetch()
            return time.perf_counter() - t0
        fns[name] = rounds
    program_lib.programs.cache_clear()
    trunk = Trunk(cfg.trunk, trunk_p)
    trunk.decode_chunk = tau
    trunk.generate([row] * K, R * tau, eos_ids=[])

    def bare():
        t0 = time.perf_counter()
        trunk.generate([row] * K, R * tau, eos_ids=[])
        return time.perf_counter() - t0
    fns["bare batched trunk (tau tokens per dispatch)"] = bare

    # The PDT variants time their rounds only; the trunk's generate includes its prefill, which is
    # subtracted using a 1-token generation (prefill + one dispatch).
    best = best_of_interleaved(fns, args.repeats, self_timed=True)
    prefill = best_of_interleaved({"p": lambda: trunk.generate([row] * K, 1, eos_ids=[])}, args.repeats)["p"]
    best["bare batched trunk (tau tokens per dispatch)"] -= prefill
    per_round = {name: 1e6 * s / R for name, s in best.items()}
    print(f"round breakdown, {args.config}, K={K} streams, tau={tau}, {R} rounds back to back, "
          f"{jax.devices()[0].device_kind} x{os.cpu_count()} cores")
    for name, us in per_round.items():
        print(f"{name:<46}{us:>9.1f} us/round")
    full = per_round["full round"]
    costs = {f"cost_{slug(k.removeprefix('without '))}_us": full - v for k, v in per_round.items()
             if k.startswith("without")}
    for k, v in costs.items():
        print(f"  {k}: {v:+.1f}")
    if args.json:
        r = {"config": args.config, "streams": K, "block_size": tau, "rounds": R, "cpu_count": os.cpu_count(),
             **{f"us_per_round_{slug(k)}": v for k, v in per_round.items()}, **costs}
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return per_round


if __name__ == "__main__":
    main()

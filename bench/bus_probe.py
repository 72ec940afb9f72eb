"""Does the bus carry what a stream must restate? Teacher-forced CE on the shared-fact tokens.

    python bench/bus_probe.py --runs=runs/demo [--stage=stage2_notes_bus] [--records=32] [--json out.json]

On a demo runs directory (``launch/demo.py``): the validation records' shared-fact tokens
(``records.shared_spans``: e.g. the founder Trade and Legacy restate, the year Legacy repeats),
and on them, per stream, the mean next-token CE of
  * ``bus``: the stage's exported sidecar in the exact training form (= the runtime's rounds);
  * ``hidden``: the same with no stream publishing any note (snapshot 0 stays) — what
    ``--cf-ablate all --cf-ablate-keep-seed`` shows the streams at inference;
  * ``sequential``: the frozen trunk reading the whole article (the document form), i.e. with the
    sibling sections in its context — what a sequential writer can copy from.
Also the CE over all supervised tokens of each. The ratio hidden / bus is the bus's effect on the
shared facts (1 = none; log 8 ≈ 2.08 is a guess among 8 founders).
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

from configs import stages  # noqa: E402
from pdt_jax import records as R  # noqa: E402
from pdt_jax.sidecar.checkpoint import load_sidecar  # noqa: E402
from pdt_jax.tokenizer import Tokenizer  # noqa: E402
from pdt_jax.train import data, loop  # noqa: E402
from pdt_jax.train import forward as train_forward  # noqa: E402
from pdt_jax.train import step as step_lib  # noqa: E402
from pdt_jax.trunk import model as trunk_model  # noqa: E402

FIELDS = ("tokens", "lengths", "target_start", "plan_ids")


def next_token_ce(logits_BxTxV, batch) -> np.ndarray:
    """[P, K, T]: at t, the CE of the token at t + 1 (0 at the last position)."""
    P, K, T = batch["tokens"].shape
    lp = jax.nn.log_softmax(jnp.asarray(logits_BxTxV, jnp.float32).reshape(P, K, T, -1)[..., :-1, :], -1)
    ce = -jnp.take_along_axis(lp, jnp.asarray(batch["tokens"])[..., 1:, None], -1)[..., 0]
    return np.concatenate([np.asarray(ce), np.zeros((P, K, 1), np.float32)], -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/demo")
    ap.add_argument("--stage", default="stage2_notes_bus", help="the stage workdir under --runs whose export is probed")
    ap.add_argument("--records", type=int, default=32, help="validation records (batches of 8)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    c = stages.get_config(2, "demo")
    c.stage.init_from = "fresh"
    c.trunk_checkpoint = os.path.join(a.runs, "pretrain", "export", "trunk")
    c.data.export_dir = os.path.join(a.runs, "data", "export")
    cfg = loop.check(c)
    trunk = loop.load_trunk(c, cfg, cfg.make_mesh())
    tok = Tokenizer.for_model(None, c.trunk_checkpoint, cfg.trunk.vocab_size)
    side = jax.tree.map(jnp.asarray, load_sidecar(os.path.join(a.runs, a.stage, "export", "sidecar.safetensors"),
                                                  cfg.trunk, cfg.sidecar))
    sc = cfg.sidecar
    # The stage's rows and shared-fact masks (the bus's), and the article rows the sequential trunk reads.
    spec = data.RowSpec(num_streams=cfg.K, block_size=sc.block_size, lag=sc.lag, plan_slots=sc.planner_slots,
                        notes_dim=sc.notes_dim, buckets=tuple(c.data.buckets))
    spec_article = dataclasses.replace(spec, article=True)
    feat, feat_article = data.Featurizer(spec, tok), data.Featurizer(spec_article, tok)
    recs = R.read_records(os.path.join(c.data.export_dir, "validation.parquet")).to_pylist()[:a.records]
    if len(recs) < 8:
        raise SystemExit(f"{c.data.export_dir}/validation.parquet: {len(recs)} records, need at least 8")
    exact = jax.jit(lambda s, b: train_forward.forward_exact(trunk, s, b, cfg=cfg)["lm_logits"])
    static = step_lib.StepStatic(cfg=cfg, chosen=(), weights=())
    article = jax.jit(lambda b: trunk_model.unembed(trunk, step_lib.document_hidden(static, trunk, b, article=True)))
    sums: dict[str, np.ndarray] = {}
    for at in range(0, len(recs) - 7, 8):
        b = {k: v[0] for k, v in data.collate([feat(r) for r in recs[at:at + 8]], spec).items()}
        art = {k: v[0] for k, v in data.collate([feat_article(r) for r in recs[at:at + 8]], spec_article).items()}
        assert (art["tokens"] == b["tokens"]).all()
        P, K, _ = b["tokens"].shape
        shift = lambda m: np.concatenate([m[..., 1:], np.zeros_like(m[..., :1])], -1)   # predicted at t - 1
        masks = {"shared": shift(b["shared_mask"]), "all": shift(b["label_mask"])}
        ces = {"bus": next_token_ce(exact(side, {k: b[k] for k in FIELDS}), b),
               "hidden": next_token_ce(exact(side, dict({k: b[k] for k in FIELDS},
                                                        producer_keep=np.zeros((P, K), bool))), b),
               "sequential": next_token_ce(article({k: art[k] for k in ("kd_tokens", "kd_lengths", "kd_index")}), b)}
        for name, ce in ces.items():
            for mname, m in masks.items():
                for k in range(K):
                    key = f"{mname}_{name}_stream{k + 1}"
                    sums[key] = sums.get(key, np.zeros(2)) + [float((ce[:, k] * m[:, k]).sum()), float(m[:, k].sum())]
    out = {"records": len(recs) // 8 * 8, "stage": a.stage}
    for key, (num, den) in sorted(sums.items()):
        out[f"ce_{key}"] = num / den if den else None
        if key.startswith("shared_") and key.endswith(tuple(f"stream{k + 1}" for k in range(cfg.K))):
            out[f"tokens_{key}"] = int(den)
    for k in range(1, cfg.K + 1):
        bus, hidden = out.get(f"ce_shared_bus_stream{k}"), out.get(f"ce_shared_hidden_stream{k}")
        if bus and hidden:
            out[f"ratio_hidden_over_bus_stream{k}"] = hidden / bus
    for key, v in out.items():
        print(f"{key:40s} {v:.3f}" if isinstance(v, float) else f"{key:40s} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Greedy decoding speed of the trunk: PDT-JAX vs transformers ``generate`` (float32, CPU), same run.

    python bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py:small [--json out.json]

Prints tokens/s at batch 1 and batch 3 for both, the ratio PDT-JAX / transformers, the cost of
batch 3 relative to batch 1 (wall time), and the one-off compile time. Both models hold the same
random weights (ours exported through the HF tensor mapping), and both must produce the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench._timing import best_of_interleaved  # noqa: E402
from pdt_jax import config_files  # noqa: E402
from pdt_jax.trunk import Trunk, TrunkConfig  # noqa: E402
from pdt_jax.trunk.hf_layout import hf_state_dict  # noqa: E402


def load_config(spec: str) -> TrunkConfig:
    return config_files.trunk_config(config_files.load(spec))


def hf_model(trunk: Trunk):
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(**{k: v for k, v in trunk.cfg.to_hf().items() if k not in ("architectures", "model_type", "dtype")},
                       attn_implementation="eager")
    model = GptOssForCausalLM(cfg).float().eval()
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in hf_state_dict(trunk.params, trunk.cfg)}
    model.load_state_dict(state, strict=True)
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/gpt_oss_20b.py:small")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=112, help="prompt + new = 128 by default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(args.config).replace(dtype="float32")
    trunk = Trunk.random(cfg, seed=0, init_std=0.05)
    model = hf_model(trunk)
    rng = np.random.RandomState(0)
    results = {"config": args.config, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}
    prompts, hf_fns, first, compile_s = {}, {}, {}, {}
    for batch in (1, 3):
        prompts[batch] = p = rng.randint(16, cfg.vocab_size, (batch, args.prompt_len))
        t0 = time.perf_counter()
        first[batch] = trunk.generate(p, args.new_tokens, eos_ids=[])  # compiles prefill + step
        compile_s[batch] = time.perf_counter() - t0
        ids = torch.tensor(p, dtype=torch.long)

        def hf_generate(ids=ids):
            with torch.no_grad():
                return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        hf_fns[batch] = hf_generate
    # All contenders in turn, so that a slow phase of the shared machine hits them alike.
    best = best_of_interleaved({
        "jax1": lambda: trunk.generate(prompts[1], args.new_tokens, eos_ids=[]),
        "jax3": lambda: trunk.generate(prompts[3], args.new_tokens, eos_ids=[]),
        "hf1": hf_fns[1], "hf3": hf_fns[3]}, args.repeats)
    for batch in (1, 3):
        jax_s, hf_s = best[f"jax{batch}"], best[f"hf{batch}"]
        hf_out = hf_fns[batch]()
        ours = np.asarray(first[batch].tokens)
        agree = float(np.mean(hf_out[:, args.prompt_len:].numpy() == ours))
        # Free-running greedy texts part ways after the first near-tie between two logits (random
        # weights make many); teacher-forced, transformers' argmax must reproduce every choice of ours.
        with torch.no_grad():
            seq = torch.tensor(np.concatenate([prompts[batch], ours], axis=1), dtype=torch.long)
            hf_next = model(seq).logits[:, args.prompt_len - 1:-1].argmax(-1).numpy()
        forced = float(np.mean(hf_next == ours))
        n = batch * args.new_tokens
        results.update({
            f"jax_tok_s_b{batch}": n / jax_s, f"hf_tok_s_b{batch}": n / hf_s,
            f"speedup_b{batch}": hf_s / jax_s, f"jax_wall_s_b{batch}": jax_s, f"hf_wall_s_b{batch}": hf_s,
            f"compile_s_b{batch}": compile_s[batch] - jax_s, f"free_running_agreement_b{batch}": agree,
            f"teacher_forced_agreement_b{batch}": forced,
        })
    results["batch3_over_batch1_wall"] = results["jax_wall_s_b3"] / results["jax_wall_s_b1"]
    print(f"trunk decode, {args.config}, prompt {args.prompt_len} + {args.new_tokens} new, greedy, float32, "
          f"{results['device']} x{os.cpu_count()} cores")
    print(f"{'batch':>5} {'PDT-JAX tok/s':>14} {'transformers tok/s':>19} {'ratio':>7} {'compile s':>10} "
          f"{'same greedy choice':>19}")
    for b in (1, 3):
        print(f"{b:>5} {results[f'jax_tok_s_b{b}']:>14.1f} {results[f'hf_tok_s_b{b}']:>19.1f} "
              f"{results[f'speedup_b{b}']:>6.2f}x {results[f'compile_s_b{b}']:>10.2f} "
              f"{results[f'teacher_forced_agreement_b{b}']:>19.3f}")
    print(f"batch 3 wall time / batch 1 wall time (PDT-JAX): {results['batch3_over_batch1_wall']:.2f}x; "
          f"batch-1 speedup target >= 3x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()

"""Greedy decoding speed of the trunk: PDT-JAX vs transformers ``generate`` (float32, CPU), same run.

    python bench/trunk_decode.py --config=configs/model/gpt_oss_20b.py:small [--json out.json]

Prints tokens/s at batch 1 and batch 3 for both, the ratio PDT-JAX / transformers, the cost of
batch 3 relative to batch 1 (wall time), the one-off compile time, and the decode step's memory
traffic: bytes read per step (bench/_hbm.py), achieved GB/s and, on a known accelerator, the
fraction of its peak HBM bandwidth. Both models hold the same random weights (ours exported through
the HF tensor mapping), and both must produce the same tokens. ``--no-reference`` skips
transformers (it runs on the CPU only): the accelerator mode of bench/gpu_suite.sh.
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

from bench._hbm import peak_bandwidth, step_bytes  # noqa: E402
from bench._timing import best_of_interleaved  # noqa: E402
from pdt_jax import config_files  # noqa: E402
from pdt_jax.trunk import Trunk, TrunkConfig  # noqa: E402
from pdt_jax.trunk.hf_layout import hf_state_dict  # noqa: E402
from pdt_jax.trunk.moe import pick_impl  # noqa: E402


def load_config(spec: str, overrides=()) -> TrunkConfig:
    return config_files.trunk_config(config_files.load(spec, overrides))


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
    ap.add_argument("--config", default="configs/model/gpt_oss_20b.py:small",
                    help="trunk config; override fields with --config.num_layers=8")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=112, help="prompt + new = 128 by default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,3")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="float32 (default: the transformers reference runs in float32 on CPU)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip transformers (accelerators: the reference runs on the CPU only)")
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)  # --config.x=y overrides go to config_flags
    batches = [int(b) for b in args.batches.split(",")]

    cfg = load_config(args.config, overrides).replace(dtype=args.dtype)
    trunk = Trunk.random(cfg, seed=0, init_std=0.05)
    device = jax.devices()[0]
    results = {"config": args.config, "overrides": overrides, "prompt_len": args.prompt_len,
               "new_tokens": args.new_tokens, "dtype": args.dtype, "device": device.device_kind,
               "platform": device.platform, "cpu_count": os.cpu_count()}
    model = None
    if not args.no_reference:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        model = hf_model(trunk)
    rng = np.random.RandomState(0)
    prompts, fns, first, compile_s = {}, {}, {}, {}
    for batch in batches:
        prompts[batch] = p = rng.randint(16, cfg.vocab_size, (batch, args.prompt_len))
        t0 = time.perf_counter()
        first[batch] = trunk.generate(p, args.new_tokens, eos_ids=[])  # compiles prefill + step
        compile_s[batch] = time.perf_counter() - t0
        trunk.generate(p, 1, eos_ids=[])  # prefill and one step: subtracted to time the steps alone
        fns[f"jax{batch}"] = lambda p=p: trunk.generate(p, args.new_tokens, eos_ids=[])
        fns[f"prefill{batch}"] = lambda p=p: trunk.generate(p, 1, eos_ids=[])
        if model is not None:
            import torch
            ids = torch.tensor(p, dtype=torch.long)

            def hf_generate(ids=ids):
                with torch.no_grad():
                    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                          min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            fns[f"hf{batch}"] = hf_generate
    # All contenders in turn, so that a slow phase of the shared machine hits them alike.
    best = best_of_interleaved(fns, args.repeats)
    peak = peak_bandwidth(device.device_kind)
    for batch in batches:
        jax_s = best[f"jax{batch}"]
        n = batch * args.new_tokens
        step_s = (jax_s - best[f"prefill{batch}"]) / max(1, args.new_tokens - 1)
        read = step_bytes(cfg, batch, args.prompt_len + args.new_tokens // 2, pick_impl(batch, cfg))
        results.update({
            f"jax_tok_s_b{batch}": n / jax_s, f"jax_wall_s_b{batch}": jax_s,
            f"compile_s_b{batch}": compile_s[batch] - jax_s, f"step_s_b{batch}": step_s,
            f"bytes_per_step_b{batch}": read, f"achieved_bandwidth_b{batch}": read / step_s,
            f"hbm_utilisation_b{batch}": read / step_s / peak if peak else None,
        })
        if model is not None:
            import torch
            hf_s = best[f"hf{batch}"]
            hf_out = fns[f"hf{batch}"]()
            ours = np.asarray(first[batch].tokens)
            agree = float(np.mean(hf_out[:, args.prompt_len:].numpy() == ours))
            # Free-running greedy texts part ways after the first near-tie between two logits (random
            # weights make many); teacher-forced, transformers' argmax must reproduce every choice of ours.
            with torch.no_grad():
                seq = torch.tensor(np.concatenate([prompts[batch], ours], axis=1), dtype=torch.long)
                hf_next = model(seq).logits[:, args.prompt_len - 1:-1].argmax(-1).numpy()
            results.update({f"hf_tok_s_b{batch}": n / hf_s, f"speedup_b{batch}": hf_s / jax_s,
                            f"hf_wall_s_b{batch}": hf_s, f"free_running_agreement_b{batch}": agree,
                            f"teacher_forced_agreement_b{batch}": float(np.mean(hf_next == ours))})
    if 1 in batches and 3 in batches:
        results["batch3_over_batch1_wall"] = results["jax_wall_s_b3"] / results["jax_wall_s_b1"]
    print(f"trunk decode, {args.config} {' '.join(overrides)}, prompt {args.prompt_len} + {args.new_tokens} new, "
          f"greedy, {args.dtype}, {results['device']} ({device.platform}, {os.cpu_count()} host cores)")
    print(f"{'batch':>5} {'PDT-JAX tok/s':>14} {'transformers tok/s':>19} {'ratio':>7} {'compile s':>10} "
          f"{'same greedy choice':>19} {'step ms':>8} {'GB/s read':>10} {'HBM util':>9}")
    for b in batches:
        ref = (f"{results[f'hf_tok_s_b{b}']:>19.1f} {results[f'speedup_b{b}']:>6.2f}x" if model is not None
               else f"{'-':>19} {'-':>7}")
        same = f"{results[f'teacher_forced_agreement_b{b}']:>19.3f}" if model is not None else f"{'-':>19}"
        util = results[f"hbm_utilisation_b{b}"]
        print(f"{b:>5} {results[f'jax_tok_s_b{b}']:>14.1f} {ref} {results[f'compile_s_b{b}']:>10.2f} {same} "
              f"{1e3 * results[f'step_s_b{b}']:>8.3f} {results[f'achieved_bandwidth_b{b}'] / 1e9:>10.1f} "
              f"{'-' if util is None else f'{100 * util:.1f}%':>9}")
    if "batch3_over_batch1_wall" in results:
        print(f"batch 3 wall time / batch 1 wall time (PDT-JAX): {results['batch3_over_batch1_wall']:.2f}x")
    if model is not None:
        print("batch-1 speedup target vs transformers: >= 3x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()

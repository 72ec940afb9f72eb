"""What ``launch/infer.py`` does with its parsed flags: validate them, load the model, run, write
manifests. Kept in the library so that tests reach every branch."""
from __future__ import annotations

import json
import os
import sys
import warnings

import jax

from pdt_jax import config_files
from pdt_jax import model as pdt
from pdt_jax.runtime import inputs
from pdt_jax.runtime.options import Cadence, Counterfactuals, GateAnnealing, RuntimeOptions
from pdt_jax.runtime.run import run_pdt, run_sequential
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.trunk.hf_layout import CheckpointError

NOT_YET = ("medusa", "lookahead", "eagle")


def _pairs(values, sep, flag, convert=str):
    out = []
    for v in values:
        left, found, right = v.partition(sep)
        if not found or not left or not right:
            raise ValueError(f"{flag} {v!r}: expected NAME{sep}VALUE")
        try:
            out.append((left, convert(right)))
        except ValueError:
            raise ValueError(f"{flag} {v!r}: {right!r} is not a valid value") from None
    return out


def _check_streams(names, valid, flag):
    bad = sorted(set(names) - set(valid) - ({"all"} if flag != "--seed-text" else set()))
    if bad:
        raise ValueError(f"{flag}: unknown stream(s) {bad}; valid streams: {list(valid)}")


def options_from(args, streams) -> RuntimeOptions:
    swap = _pairs(args.cf_swap, ":", "--cf-swap")
    stale = _pairs(args.cf_stale, ":", "--cf-stale", int)
    cadence = _pairs(args.cadence_M, "=", "--cadence-M", int)
    _check_streams([s for pair in swap for s in pair], streams, "--cf-swap")
    _check_streams([s for s, _ in stale], streams, "--cf-stale")
    for flag, values in (("--cf-shuffle", args.cf_shuffle), ("--cf-freeze", args.cf_freeze),
                         ("--cf-ablate", args.cf_ablate), ("--cadence-M", [s for s, _ in cadence])):
        _check_streams(values, streams, flag)
    return RuntimeOptions(
        max_new_tokens=args.max_new_tokens, lag=args.read_lag_delta, gate_g=args.gate_g, alpha=args.alpha,
        readiness_threshold=args.readiness_threshold, max_retries=args.max_retries,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        cadence=Cadence(mode=args.cadence_mode, every=tuple(cadence), max_interval=args.cadence_max_interval),
        gate_annealing=GateAnnealing(enabled=not args.no_gate_annealing),
        counterfactuals=Counterfactuals(ablate=tuple(args.cf_ablate), swap=tuple(swap), shuffle=tuple(args.cf_shuffle),
                                        freeze=tuple(args.cf_freeze), stale=tuple(stale), tag=args.cf_tag),
        log_margins=args.log_margins, sync_profile=args.sync_profile, memory_report=args.memory_report,
        run_ahead=not args.no_run_ahead)


def load_model(args):
    """Returns (PDTConfig, trunk params, sidecar params, tokenizer)."""
    from pdt_jax.sidecar.checkpoint import load_sidecar
    from pdt_jax.trunk import Trunk
    from pdt_jax.trunk.params import init_trunk

    cfg = config_files.pdt_config(config_files.load(args.config))
    if args.checkpoint:
        ck = args.checkpoint
        if not os.path.isdir(ck):
            raise CheckpointError(f"--checkpoint {ck!r}: not found; expected a PDT checkpoint directory "
                                  f"(trunk/ + sidecar.safetensors) or a trunk directory (HF config.json + "
                                  f"*.safetensors, or a converted pdt_trunk.json)")
        trunk_dir = os.path.join(ck, "trunk") if os.path.isdir(os.path.join(ck, "trunk")) else ck
        trunk = Trunk.from_pretrained(trunk_dir)
        if trunk.cfg.replace(dtype=cfg.trunk.dtype) != cfg.trunk:
            warnings.warn("the checkpoint's trunk config differs from --config's trunk group; using the checkpoint's")
        cfg = pdt.PDTConfig(trunk.cfg, cfg.sidecar)
        trunk_params = trunk.params
        side_path = os.path.join(ck, "sidecar.safetensors")
        if os.path.exists(side_path):
            sidecar_params = load_sidecar(side_path, cfg.trunk, cfg.sidecar)
        else:
            print(f"warning: {ck} has no sidecar.safetensors: the sidecar is freshly initialised", file=sys.stderr)
            sidecar_params = pdt.init_sidecar(cfg, jax.random.key(args.seed + 1))
    else:
        print(f"warning: no --checkpoint: {args.config} runs with freshly initialised parameters", file=sys.stderr)
        trunk_params = init_trunk(cfg.trunk, jax.random.key(args.seed), 0.02)
        sidecar_params = pdt.init_sidecar(cfg, jax.random.key(args.seed + 1))
    tok_path = args.tokenizer
    if tok_path == "auto":
        candidates = [p for p in ([args.checkpoint] if args.checkpoint else []) if p]
        found = [c for c in candidates if os.path.exists(os.path.join(c, "tokenizer.json"))
                 or os.path.exists(os.path.join(c, "tokenizer", "tokenizer.json"))]
        if found:
            tokenizer = Tokenizer.from_file(found[0])
        elif cfg.trunk.vocab_size == Tokenizer.tiny().vocab_size:
            tokenizer = Tokenizer.tiny()
        else:
            raise ValueError(f"--tokenizer: none found next to the checkpoint and the model has "
                             f"{cfg.trunk.vocab_size} ids; pass --tokenizer PATH/tokenizer.json")
    else:
        tokenizer = Tokenizer.from_file(tok_path)
    if tokenizer.vocab_size > cfg.trunk.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids, the model only "
                         f"{cfg.trunk.vocab_size}")
    return cfg, trunk_params, sidecar_params, tokenizer


def _write(path, manifest):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)


def run_cli(args) -> int:
    if args.baseline in NOT_YET:
        raise ValueError(f"--baseline {args.baseline}: not available yet (token-level baselines arrive with a "
                         f"later issue); available: sequential")
    if bool(args.prompt) == bool(args.prompts_file):
        raise ValueError("give exactly one of --prompt or --prompts-file")
    prompts = [args.prompt] if args.prompt else inputs.prompts_file(args.prompts_file)
    cfg, trunk_params, side_params, tokenizer = load_model(args)
    names = cfg.sidecar.stream_names
    if args.stream and list(args.stream) != list(names):
        raise ValueError(f"--stream {args.stream}: the model's streams are {list(names)} (in this order)")
    opts = options_from(args, names)
    extra = {"prompt_file": args.prompts_file, "cadence_overrides": dict(opts.cadence.every),
             "tokenizer": {"source": tokenizer.source, "vocab_size": tokenizer.vocab_size}}
    if args.notes_text_file:
        extra["reference_notes"] = inputs.stream_map(args.notes_text_file, "--notes-text-file", names)
    if args.baseline == "sequential":
        from pdt_jax.trunk import Trunk
        trunk = Trunk(cfg.trunk, trunk_params)
        manifests = run_sequential(trunk, tokenizer, prompts, opts, system=args.system,
                                   extra=dict(extra, **cfg.sidecar.hashing_metadata()))
    else:
        prefixes = inputs.stream_map(args.stream_prefix_file, "--stream-prefix-file", names) if args.stream_prefix_file else None
        seeds = inputs.stream_map(args.seed_text_file, "--seed-text-file", names) if args.seed_text_file else {}
        for name, text in _pairs(args.seed_text, "=", "--seed-text"):
            _check_streams([name], names, "--seed-text")
            seeds[name] = text
        catalog = inputs.plan_catalog(args.plan_text_file, names, cfg.sidecar.planner_slots) if args.plan_text_file else None
        on_event = (lambda e: print(json.dumps(e), flush=True)) if args.stream_jsonl else None
        manifests = run_pdt(cfg, trunk_params, side_params, tokenizer, prompts, opts, stream_prefixes=prefixes,
                            seed_texts=seeds or None, catalog=catalog, replay_dir=args.replay_artifact_dir,
                            replay_chunk_size=args.replay_chunk_size, system=args.system, extra=extra,
                            on_event=on_event)
    if args.output:
        if len(manifests) == 1 and not args.prompts_file:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            _write(args.output, manifests[0])
        else:
            os.makedirs(args.output, exist_ok=True)
            for i, m in enumerate(manifests):
                _write(os.path.join(args.output, f"manifest-{i:04d}.json"), m)
    if args.verbose or not args.output:
        for m in manifests:
            print(json.dumps({"prompt": m["prompt"], "merged_answer": m["merged_answer"],
                              "rollbacks": len(m["rollbacks"])}, ensure_ascii=False))
    return 0

"""What ``launch/infer.py`` does: parse the two configs (``--config`` = the model, its mesh and
sharding rules; ``--infer`` = the inference settings, ``configs/infer.py``) with ml_collections
``config_flags`` and their ``--config.x=`` / ``--infer.x=`` overrides, apply the seed README's flags
as aliases onto them, load the model onto the mesh, run, write manifests. Kept in the library so
that tests reach every branch."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings

import jax
from absl import flags
from ml_collections import config_flags

from pdt_jax import config_files
from pdt_jax import model as pdt
from pdt_jax import sharding
from pdt_jax.runtime import inputs, options
from pdt_jax.runtime.run import run_pdt, run_sequential
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.trunk.hf_layout import CheckpointError

BASELINES = ("sequential", "medusa", "lookahead", "eagle")
NOT_YET = ("medusa", "lookahead", "eagle")


@dataclasses.dataclass(frozen=True)
class Alias:
    """A seed-README flag and the config field it sets (``field`` is a path in the inference
    config; ``mesh`` sets the model config's mesh)."""
    flag: str
    field: str
    kind: str          # "str", "int", "float", "multi", "true", "false", "enum:a|b", "mesh"
    help: str


ALIASES = (
    Alias("prompt", "prompt", "str", "one prompt"),
    Alias("prompts-file", "prompts_file", "str", "JSONL, one {\"prompt\": ...} per line: all prompts in one batch"),
    Alias("system", "system", "str", "harmony system message"),
    Alias("stream", "streams", "multi", "stream name (repeatable); must match the model's streams, in order"),
    Alias("stream-prefix-file", "stream_prefix_file", "str", "JSON {stream: prefix text}"),
    Alias("seed-text-file", "seed_text_file", "str", "JSON {stream: seed text} injected as snapshot 0"),
    Alias("seed-text", "seed_texts", "multi", "STREAM=TEXT (repeatable)"),
    Alias("plan-text-file", "plan_text_file", "str", "JSON {stream: [plan item, ...]}: the plan catalog"),
    Alias("notes-text-file", "notes_text_file", "str", "JSON {stream: notes text} attached for later scoring"),
    Alias("checkpoint", "checkpoint", "str", "PDT checkpoint (trunk/ + sidecar.safetensors) or a trunk directory"),
    Alias("tokenizer", "tokenizer", "str", "tokenizer.json (default: the checkpoint's; the tiny BPE for tiny models)"),
    Alias("read-lag-delta", "read_lag_delta", "int", "Δ in rounds (0 = visible in the next round)"),
    Alias("alpha", "alpha", "float", "blend attended and base logits (1 = attended only)"),
    Alias("gate-g", "gate_g", "float", "runtime gate g on the SNC and adapter residuals (0 = the trunk)"),
    Alias("max-new-tokens", "max_new_tokens", "int", "tokens per stream"),
    Alias("cadence-M", "cadence.every", "multi", "STREAM=M or all=M (repeatable)"),
    Alias("cadence-mode", "cadence.mode", "enum:deterministic|stochastic|adaptive", "when streams write notes"),
    Alias("cadence-max-interval", "cadence.max_interval", "int", "force a note after this many tokens"),
    Alias("readiness-threshold", "readiness_threshold", "float", "γ (default: the model config's)"),
    Alias("max-retries", "max_retries", "int", "rollback retries per round before a forced commit"),
    Alias("no-gate-annealing", "gate_annealing.enabled", "false", "keep g fixed"),
    Alias("stream-jsonl", "stream_jsonl", "true", "print one JSON line per committed token"),
    Alias("log-margins", "log_margins", "true", "record per-token top-2 logit margins"),
    Alias("memory-report", "memory_report", "true", "record per-round memory"),
    Alias("sync-profile", "sync_profile", "true", "record the time the host waits for the device"),
    Alias("no-run-ahead", "run_ahead", "false", "wait for each round's decisions before dispatching the next"),
    Alias("cf-swap", "counterfactuals.swap", "multi", "A:B (repeatable)"),
    Alias("cf-shuffle", "counterfactuals.shuffle", "multi", "STREAM (repeatable)"),
    Alias("cf-freeze", "counterfactuals.freeze", "multi", "STREAM (repeatable)"),
    Alias("cf-stale", "counterfactuals.stale", "multi", "STREAM:DELTA (repeatable)"),
    Alias("cf-ablate", "counterfactuals.ablate", "multi", "STREAM|all (repeatable)"),
    Alias("cf-ablate-keep-seed", "counterfactuals.ablate_keep_seed", "true",
          "--cf-ablate hides the published notes only; snapshot 0 (the plan) stays"),
    Alias("cf-tag", "counterfactuals.tag", "str", "a label recorded in the manifest"),
    Alias("baseline", "baseline", "enum:" + "|".join(BASELINES), "run a baseline instead of PDT"),
    Alias("replay-artifact-dir", "replay_artifact_dir", "str", "write the replay artifact here"),
    Alias("replay-chunk-size", "replay_chunk_size", "int", "rounds per replay chunk file"),
    Alias("output", "output", "str", "manifest path (a directory with --prompts-file)"),
    Alias("verbose", "verbose", "true", "print each prompt's merged answer"),
    Alias("temperature", "temperature", "float", "0 = greedy"),
    Alias("top-p", "top_p", "float", "nucleus sampling"),
    Alias("top-k", "top_k", "int", "0 = off"),
    Alias("seed", "seed", "int", "sampling seed"),
    Alias("mesh", "mesh", "mesh", "device mesh, e.g. data=1,fsdp=1,expert=8,tensor=1 (sets --config.mesh.*)"),
)


class UsageError(ValueError):
    """A flag, config field or value the command line got wrong (exit status 2)."""


def usage(default_infer: str) -> str:
    lines = ["usage: python launch/infer.py --config=configs/model/pdt.py[:variant] [--infer=configs/infer.py] ...",
             "",
             "  --config=FILE[:variant]   model config (trunk, sidecar, mesh, sharding); override fields with",
             "                            --config.sidecar.lag=0, --config.mesh.expert=8, ...",
             f"  --infer=FILE[:variant]    inference settings (default {default_infer}); override fields with",
             "                            --infer.max_new_tokens=32, --infer.counterfactuals.ablate=all, ...",
             "", "seed README flags (aliases onto the configs):"]
    for a in ALIASES:
        target = "--config.mesh" if a.kind == "mesh" else f"--infer.{a.field}"
        value = "" if a.kind in ("true", "false") else " VALUE"
        lines.append(f"  --{a.flag}{value:<7} {a.help} [{target}{'=False' if a.kind == 'false' else ''}]")
    return "\n".join(lines)


def _define(fv, argv, default_infer):
    config_flags.DEFINE_config_file("config", None, "model config file[:variant]", flag_values=fv, sys_argv=argv)
    config_flags.DEFINE_config_file("infer", default_infer, "inference config file[:variant]", flag_values=fv,
                                    sys_argv=argv)
    for a in ALIASES:
        if a.kind in ("str", "mesh"):
            flags.DEFINE_string(a.flag, None, a.help, flag_values=fv)
        elif a.kind == "int":
            flags.DEFINE_integer(a.flag, None, a.help, flag_values=fv)
        elif a.kind == "float":
            flags.DEFINE_float(a.flag, None, a.help, flag_values=fv)
        elif a.kind == "multi":
            flags.DEFINE_multi_string(a.flag, None, a.help, flag_values=fv)
        elif a.kind in ("true", "false"):
            flags.DEFINE_boolean(a.flag, None, a.help, flag_values=fv)
        else:
            flags.DEFINE_enum(a.flag, None, a.kind[len("enum:"):].split("|"), a.help, flag_values=fv)


def _set(cd, path: str, value):
    *parents, name = path.split(".")
    for p in parents:
        cd = cd[p]
    cd[name] = value


def _flag_value(argv, name: str) -> str | None:
    """The value of --name=V or --name V in argv (the last one), else None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def parse(argv, default_infer: str):
    """argv (program name first) → (model ConfigDict, inference ConfigDict), aliases applied."""
    argv = list(argv)
    for name in ("config", "infer"):  # a missing file is named plainly (config_flags raises a bare OSError)
        path = _flag_value(argv, name) or (default_infer if name == "infer" else None)
        if path and not os.path.isfile(path.partition(":")[0]):
            raise UsageError(f"--{name} {path}: file {path.partition(':')[0]!r} not found")
    fv = flags.FlagValues()
    try:
        _define(fv, argv, default_infer)
        rest = fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, OSError) as e:
        message = str(e).strip('"')
        if isinstance(e, (AttributeError, KeyError)):
            overrides = [a for a in argv[1:] if a.startswith(("--config.", "--infer."))]
            message = f"unknown config field {message} (in {overrides})"
        elif "Traceback" in message:  # an error inside a config file: config_flags embeds its traceback
            lines = [line for line in message.splitlines() if line.strip()]
            message = f"{lines[0]} {lines[-1].strip()}"
        raise UsageError(message) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments {rest[1:]}; every value needs its flag")
    model_cd, infer_cd = fv["config"].value, fv["infer"].value
    if model_cd is None:
        raise UsageError("--config is required: a model config such as configs/model/pdt.py:tiny")
    for a in ALIASES:
        flag = fv[a.flag]
        if not flag.present:
            continue
        value = flag.value
        if a.kind == "mesh":
            shape = sharding.parse_mesh(value)
            for axis in sharding.MESH_AXES:
                model_cd.mesh[axis] = shape.get(axis, 1)
        elif a.kind == "multi":
            _set(infer_cd, a.field, tuple(value))
        elif a.kind == "true":
            _set(infer_cd, a.field, bool(value))
        elif a.kind == "false":
            _set(infer_cd, a.field, not value)
        else:
            _set(infer_cd, a.field, value)
    return model_cd, infer_cd


def init_params(cfg: pdt.PDTConfig, seed: int, mesh, init_std: float = 0.02):
    """A random trunk and a fresh sidecar, each leaf placed on its sharding as soon as it is drawn
    (one leaf at a time passes through a device: a 20B trunk is never whole on one). Leaf by leaf,
    eagerly: one jitted initializer of the whole trunk costs seconds of compilation even for a tiny one."""
    from pdt_jax.runtime.program import param_shardings
    from pdt_jax.sidecar.params import sidecar_specs
    from pdt_jax.trunk.params import is_spec, trunk_specs

    def draw(specs, shardings, key):
        leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [jax.device_put(s.init(k, s.shape, s.dtype), sh) for s, k, sh in
                                            zip(leaves, keys, jax.tree.leaves(shardings))])

    trunk_sh, side_sh = param_shardings(cfg, mesh, cfg.rules)
    return (draw(trunk_specs(cfg.trunk, init_std), trunk_sh, jax.random.key(seed)),
            draw(sidecar_specs(cfg.trunk, cfg.sidecar), side_sh, jax.random.key(seed + 1)))


def load_model(cfg: pdt.PDTConfig, c, mesh):
    """Returns (PDTConfig, trunk params, sidecar params, tokenizer), parameters on their shardings."""
    from pdt_jax.sidecar.checkpoint import load_sidecar, read_sidecar_config
    from pdt_jax.trunk import Trunk

    if c.checkpoint:
        ck = c.checkpoint
        if not os.path.isdir(ck):
            raise CheckpointError(f"--checkpoint {ck!r}: not found; expected a PDT checkpoint directory "
                                  f"(trunk/ + sidecar.safetensors) or a trunk directory (HF config.json + "
                                  f"*.safetensors, or a converted pdt_trunk.json)")
        trunk_dir = os.path.join(ck, "trunk") if os.path.isdir(os.path.join(ck, "trunk")) else ck
        trunk = Trunk.from_pretrained(trunk_dir, mesh=mesh, rules=cfg.rules)
        if trunk.cfg.replace(dtype=cfg.trunk.dtype) != cfg.trunk:
            warnings.warn("the checkpoint's trunk config differs from --config's trunk group; using the checkpoint's")
        cfg = dataclasses.replace(cfg, trunk=trunk.cfg)
        trunk_params = trunk.params
        side_path = os.path.join(ck, "sidecar.safetensors")
        if os.path.exists(side_path):
            sidecar_params = load_sidecar(side_path, cfg.trunk, cfg.sidecar)
            # The readiness threshold γ calibrated by training travels with the sidecar (an explicit
            # --readiness-threshold still wins: RuntimeOptions.resolve).
            cfg = dataclasses.replace(cfg, sidecar=dataclasses.replace(
                cfg.sidecar, readiness_threshold=read_sidecar_config(side_path).readiness_threshold))
        else:
            print(f"warning: {ck} has no sidecar.safetensors: the sidecar is freshly initialised", file=sys.stderr)
            _, sidecar_params = init_params(cfg, c.seed, mesh)
    else:
        print("warning: no --checkpoint: the model config runs with freshly initialised parameters", file=sys.stderr)
        trunk_params, sidecar_params = init_params(cfg, c.seed, mesh)
    tokenizer = Tokenizer.for_model(c.tokenizer, c.checkpoint, cfg.trunk.vocab_size)
    return cfg, trunk_params, sidecar_params, tokenizer


def _write(path, manifest):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)


def run_cli(model_cd, c) -> int:
    """Runs what the two configs say; raises ValueError (and subclasses) on bad input."""
    if c.baseline and c.baseline not in BASELINES:
        raise ValueError(f"--baseline {c.baseline!r}: expected one of {list(BASELINES)}")
    if c.baseline in NOT_YET:
        raise ValueError(f"--baseline {c.baseline}: not available yet (token-level baselines arrive with a "
                         f"later issue); available: sequential")
    if bool(c.prompt) == bool(c.prompts_file):
        raise ValueError("give exactly one of --prompt or --prompts-file")
    prompts = [c.prompt] if c.prompt else inputs.prompts_file(c.prompts_file)
    cfg = config_files.pdt_config(model_cd)
    names = cfg.sidecar.stream_names
    if c.streams and list(c.streams) != list(names):
        raise ValueError(f"--stream {list(c.streams)}: the model's streams are {list(names)} (in this order)")
    opts = options.from_config(c).resolve(cfg.sidecar)        # Δ, γ and stream names: checked once, here
    mesh = cfg.make_mesh()
    cfg, trunk_params, side_params, tokenizer = load_model(cfg, c, mesh)
    extra = {"prompt_file": c.prompts_file or None, "cadence_overrides": dict(opts.cadence.every),
             "tokenizer": {"source": tokenizer.source, "vocab_size": tokenizer.vocab_size}}
    if c.notes_text_file:
        extra["reference_notes"] = inputs.stream_map(c.notes_text_file, "--notes-text-file", names)
    if c.baseline == "sequential":
        from pdt_jax.trunk import Trunk
        if opts.memory_report or opts.sync_profile:
            raise ValueError("--memory-report and --sync-profile measure PDT's rounds; the sequential baseline "
                             "(one generate call) has none")
        trunk = Trunk(cfg.trunk, trunk_params, moe_impl=cfg.moe_impl(mesh))
        manifests = run_sequential(cfg, trunk, tokenizer, prompts, opts, system=c.system or None,
                                   extra=dict(extra, **cfg.sidecar.hashing_metadata()))
    else:
        prefixes = inputs.stream_map(c.stream_prefix_file, "--stream-prefix-file", names) if c.stream_prefix_file else None
        seeds = inputs.stream_map(c.seed_text_file, "--seed-text-file", names) if c.seed_text_file else {}
        for name, text in options._pairs(c.seed_texts, "=", "--seed-text"):
            if name not in names:
                raise ValueError(f"--seed-text: unknown stream(s) {[name]}; valid streams: {list(names)}")
            seeds[name] = text
        catalog = inputs.plan_catalog(c.plan_text_file, names, cfg.sidecar.planner_slots) if c.plan_text_file else None
        on_event = (lambda e: print(json.dumps(e), flush=True)) if c.stream_jsonl else None
        manifests = run_pdt(cfg, trunk_params, side_params, tokenizer, prompts, opts, stream_prefixes=prefixes,
                            seed_texts=seeds or None, catalog=catalog, replay_dir=c.replay_artifact_dir or None,
                            replay_chunk_size=c.replay_chunk_size, system=c.system or None, extra=extra,
                            on_event=on_event, mesh=mesh)
    if c.output:
        if len(manifests) == 1 and not c.prompts_file:
            os.makedirs(os.path.dirname(os.path.abspath(c.output)), exist_ok=True)
            _write(c.output, manifests[0])
        else:
            os.makedirs(c.output, exist_ok=True)
            for i, m in enumerate(manifests):
                _write(os.path.join(c.output, f"manifest-{i:04d}.json"), m)
    if c.verbose or not c.output:
        for m in manifests:
            print(json.dumps({"prompt": m["prompt"], "merged_answer": m["merged_answer"],
                              "rollbacks": len(m["rollbacks"])}, ensure_ascii=False))
    return 0


def main(argv, default_infer: str) -> int:
    """The launcher's whole job; bad input → one line on stderr and exit status 2."""
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(usage(default_infer))
        return 0
    try:
        model_cd, infer_cd = parse(argv, default_infer)
        return run_cli(model_cd, infer_cd)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2

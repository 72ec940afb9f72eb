"""Per-device memory of PDT's programs at the real GPT-OSS-20B shapes, from XLA's own plan: the
programs are lowered and compiled on fake CPU devices with abstract inputs (no weights allocated).

    python bench/memory_plan.py [--config=configs/model/pdt.py] [--config.trunk.num_layers=2] [--devices=8] \
        [--json out.json]

Plans (one ``per_device_bytes_<plan>`` field each):
  * ``infer``: the runtime's round program (τ decode steps of every row with SNC, notes, coverage,
    readiness), P prompts × K streams with a ``--context``-token KV cache, bf16, on the config's
    mesh (default: 8 devices, experts split over them). Detail fields: weights (trunk + sidecar),
    KV caches, bus, per-row state, XLA temporaries, and the compiled program's own argument /
    output / alias / temporary sizes. Also the start program (prefill of ``--prompt-tokens``).
    XLA:CPU has no bf16 matmul and upcasts the weights inside the program, so the bf16 figure is an
    upper bound; ``per_device_bytes_infer_gpu_estimate`` takes the temporaries of the f32 program.
  * ``stage0`` … ``stage4``: the train step of configs/stage<i>.py (production default: GPT-OSS-20B
    on the stage config's mesh) at ``--train-seq`` tokens per row, abstract sharded state (parameters,
    AdamW state over the stage's trainable set) and batch. Detail fields per stage: trunk, sidecar,
    optimizer state, XLA temporaries, rows, compile time.
Target: every plan ≤ 80 GB per device (an H100).

``--gpu-target=h100`` (or ``h200``) plans for a mesh of 8 such GPUs *without any GPU*: XLA:GPU
compiles the sharded programs ahead of time for a described device (jax's deviceless topology:
``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)``), so its own
buffer plan of one device — FSDP gathers, collectives and remat as the GPU would run them — comes
back from ``memory_analysis()`` and nothing runs. It needs jax's CUDA plugin beside jax (no driver,
no CUDA libraries): ``bash bench/gpu_aot_plan.sh`` installs it outside the project's venv and runs
the stage plans. Autotuning is off (no device to time kernels on), as in the GPU runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GB = 1e9
H100_BYTES = 80e9


# Deviceless XLA:GPU targets: the GpuTargetConfig fields XLA reads to compile for a device it cannot
# query (published figures of each card; the plan depends on memory size and compute capability).
GPU_TARGETS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", memory=84_942_979_072, bandwidth=3_352_320_000_000),
    "h200": dict(name="NVIDIA H200 141GB HBM3e", memory=151_397_597_184, bandwidth=4_800_000_000_000),
}
GPU_XLA_FLAGS = ("--xla_gpu_autotune_level=0",
                 # cub's radix sort (the MoE's argsort) is instantiated on a CUDA device at the end of
                 # the compile: without one, XLA's own sort kernel (its scratch is KBs, the plan the same).
                 "--xla_gpu_enable_cub_radix_sort=false")
# plus training's own (pdt_jax/xla_flags.py, as launch/train.py sets them)


def gpu_target_config(target: str) -> str:
    """The text GpuTargetConfigProto of ``target`` (a Hopper card, compute capability 9.0)."""
    t = GPU_TARGETS[target]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {t["bandwidth"]}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {t["memory"]}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 }}
}}
platform_name: "CUDA"
device_description_str: "{t["name"]}"
"""


def gpu_topology_devices(target: str, n: int) -> list:
    """``n`` devices of a deviceless ``target`` topology (one host): programs compile for them."""
    from jax.experimental import topologies
    try:
        topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(target),
                                            topology=f"1x1x{n}")
    except Exception as e:   # no CUDA plugin: say how to get it
        raise SystemExit(f"--gpu-target={target}: jax's CUDA plugin cannot build a topology ({e}); install "
                         "jax-cuda13-plugin and jax-cuda13-pjrt at jax's version beside jax "
                         "(bash bench/gpu_aot_plan.sh does) and run with JAX_PLATFORMS=cpu") from None
    return list(topo.devices)


def _fake_devices(n: int, mock_gpus: int = 0, gpu_target: str | None = None) -> None:
    if gpu_target:
        if "jax" in sys.modules:
            raise RuntimeError("bench/memory_plan.py sets XLA's GPU flags before jax is imported")
        from pdt_jax import xla_flags   # no jax import
        os.environ["XLA_FLAGS"] = xla_flags.with_train_flags(
            " ".join([os.environ.get("XLA_FLAGS", ""), *GPU_XLA_FLAGS]).strip())
        os.environ["JAX_PLATFORMS"] = "cpu"   # the plugin then skips its check of CUDA libraries it never loads
        return
    if mock_gpus:
        # One real GPU posing as host 0 of ``mock_gpus`` one-GPU hosts (jax's mock NCCL topology):
        # jax.devices() lists them all, programs compile for the whole mesh (XLA:GPU's own sharded
        # plan, collectives included) and nothing runs. --devices is ignored.
        from pdt_jax import xla_flags   # training's flags, as launch/train.py sets them
        os.environ["XLA_FLAGS"] = xla_flags.with_train_flags(os.environ.get("XLA_FLAGS", ""))
        import jax  # the flag must be set before the first backend starts (jax 0.11 ignores its env var)
        jax.config.update("jax_mock_gpu_topology", f"1x{mock_gpus}x1")
        return
    if n == 0:   # the backend's own devices (a GPU): XLA's real plan for that device
        return
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" in sys.modules:
        raise RuntimeError("bench/memory_plan.py sets the fake device count before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def per_device_bytes(tree) -> int:
    """Bytes of a pytree of sharded ShapeDtypeStructs on its most loaded device."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        total += int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
    return total


def infer_plan(cfg, prompts: int, context: int, prompt_tokens: int) -> dict:
    """Compiles the start and round programs with abstract, sharded inputs; returns the figures."""
    import jax
    import jax.numpy as jnp

    from pdt_jax.runtime import program as prog
    from pdt_jax.sidecar.params import sidecar_specs
    from pdt_jax.trunk.params import abstract_from_specs, trunk_specs

    mesh = cfg.make_mesh()
    rules = cfg.rules
    K, sc = cfg.K, cfg.sidecar
    P, B, tau = prompts, prompts * cfg.K, sc.block_size
    moe_impl = cfg.moe_impl(mesh)
    static = prog.RoundStatic(cfg, tau, 0, False, (), moe_impl, greedy=True, freeze=False, ablate=False)
    slack, bus_slack = 2 * tau + 1, 3
    t0 = time.perf_counter()
    progs = prog.programs(static, mesh, rules, P, prompt_tokens, context, slack, bus_slack, ())
    sh = progs.shardings
    with_sh = lambda tree, shardings: jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
    trunk = with_sh(abstract_from_specs(trunk_specs(cfg.trunk)), sh["trunk"])
    side = with_sh(abstract_from_specs(sidecar_specs(cfg.trunk, cfg.sidecar)), sh["sidecar"])
    rep = sh["replicated"]
    scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)
    ids = jax.ShapeDtypeStruct((B, prompt_tokens), jnp.int32, sharding=jax.sharding.NamedSharding(
        mesh, rules.spec((B, prompt_tokens), ("batch", None), mesh)))
    rows = lambda dt: jax.ShapeDtypeStruct((B,), dt, sharding=sh["rows"])
    start_args = (trunk, side, ids, rows(jnp.int32), scalar(jnp.float32), scalar(jnp.float32), None, None)
    start = progs.start.lower(*start_args).compile()
    shapes = jax.eval_shape(progs.start, *start_args)
    cache, base, small, planner, plan_ids, item_ids, bus, snap = shapes
    cache, small, bus = with_sh(cache, sh["cache"]), with_sh(small, sh["small"]), with_sh(bus, sh["bus"])
    item_ids = jax.ShapeDtypeStruct(item_ids.shape, item_ids.dtype, sharding=jax.sharding.NamedSharding(
        mesh, rules.spec(item_ids.shape, ("batch", None), mesh)))
    pub = jax.ShapeDtypeStruct((P, K), jnp.bool_, sharding=sh["prompts"])
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    round_args = (pub, scalar(jnp.int32), trunk, side, cache, None, small, bus, item_ids, scalar(jnp.int32),
                  scalar(jnp.int32), rows(jnp.bool_), rows(jnp.int32), rows(jnp.float32), scalar(jnp.float32),
                  scalar(jnp.float32), scalar(jnp.float32), key, {})
    compiled = progs.round.lower(*round_args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    smem = start.memory_analysis()
    weights = per_device_bytes(trunk) + per_device_bytes(side)
    kv, bus_b, state = per_device_bytes(cache), per_device_bytes(bus), per_device_bytes(small)
    temp = int(mem.temp_size_in_bytes)
    out = {
        "per_device_bytes_infer": weights + kv + bus_b + state + temp,
        "infer_weights_bytes": weights, "infer_trunk_bytes": per_device_bytes(trunk),
        "infer_sidecar_bytes": per_device_bytes(side), "infer_kv_cache_bytes": kv, "infer_bus_bytes": bus_b,
        "infer_row_state_bytes": state, "infer_temp_bytes": temp,
        "infer_compiled_argument_bytes": int(mem.argument_size_in_bytes),
        "infer_compiled_output_bytes": int(mem.output_size_in_bytes),
        "infer_compiled_alias_bytes": int(mem.alias_size_in_bytes),
        "infer_start_temp_bytes": int(smem.temp_size_in_bytes),
        "per_device_bytes_infer_start": weights + kv + bus_b + state + int(smem.temp_size_in_bytes),
        "infer_prompts": P, "infer_streams": K, "infer_rows": B, "infer_context": context,
        "infer_prompt_tokens": prompt_tokens, "infer_dtype": cfg.trunk.dtype, "infer_layers": cfg.trunk.num_layers,
        "infer_mesh": {k: int(v) for k, v in mesh.shape.items()}, "infer_moe_impl": moe_impl,
        "infer_compile_s": compile_s,
    }
    out["infer_fits_h100"] = max(out["per_device_bytes_infer"], out["per_device_bytes_infer_start"]) <= H100_BYTES
    return out


def train_plan(stage: int, overrides, P: int | None, T: int, accum: int | None, dtype: str | None = None,
               devices=None) -> dict:
    """Lowers and compiles stage ``stage``'s train step (configs/stage<stage>.py, production
    default) with abstract sharded state and batch; returns its per-device bytes. ``devices``:
    the mesh's devices (default jax.devices(); a deviceless GPU topology's for ``--gpu-target``)."""
    import jax

    from bench._train import abstract_batch
    from pdt_jax import config_files
    from pdt_jax.sidecar.params import sidecar_specs
    from pdt_jax.train import state as state_lib
    from pdt_jax.train import step as step_lib
    from pdt_jax.trunk.params import abstract_from_specs, trunk_specs

    config = config_files.load(f"configs/stage{stage}.py", overrides)
    cfg = config_files.pdt_config(config.model)
    if dtype:
        cfg = dataclasses.replace(cfg, trunk=cfg.trunk.replace(dtype=dtype))
    mesh = cfg.make_mesh(devices)
    devices = list(mesh.devices.flat)
    st, tr = config.stage, config.train
    P = int(tr.batch_size) if P is None else P
    A = int(tr.grad_accum) if accum is None else accum
    kd = int(config.data.kd_context) if float(st.losses.kd) > 0 else 0
    params = {"sidecar": abstract_from_specs(sidecar_specs(cfg.trunk, cfg.sidecar)),
              "trunk": abstract_from_specs(trunk_specs(cfg.trunk))}
    chosen = state_lib.trainable_paths(params, tuple(st.trainable))
    tx, sched = state_lib.optimizer(tr)
    abstract = jax.eval_shape(lambda p: state_lib.create(p, chosen, tx, 0), params)
    static = step_lib.StepStatic.from_stage(st, cfg, chosen, cfg.train_moe_impl(mesh))
    steps = step_lib.Steps(static, tx, sched, abstract, mesh, cfg.rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, steps.state_sharding)
    batch = abstract_batch(cfg, P, T, A, kd)
    t0 = time.perf_counter()
    compiled = steps.lower_train(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    name = f"stage{stage}"
    trunk_b, side_b = per_device_bytes(state.params["trunk"]), per_device_bytes(state.params["sidecar"])
    opt_b = per_device_bytes(state.opt_state)
    temp = int(mem.temp_size_in_bytes)
    return {f"per_device_bytes_{name}": trunk_b + side_b + opt_b + temp, f"{name}_trunk_bytes": trunk_b,
            f"{name}_sidecar_bytes": side_b, f"{name}_optimizer_bytes": opt_b, f"{name}_temp_bytes": temp,
            f"{name}_trainable_params": int(sum(x.size for x in state_lib.select(params, chosen).values())),
            f"{name}_rows": P * cfg.K, f"{name}_accum": A, f"{name}_seq": T, f"{name}_kd": bool(kd),
            f"{name}_form": st.forward.form, f"{name}_remat": bool(st.forward.remat),
            f"{name}_q_chunk": int(st.forward.q_chunk),
            f"{name}_mesh": {k: int(v) for k, v in mesh.shape.items()}, f"{name}_dtype": cfg.trunk.dtype,
            f"{name}_layers": cfg.trunk.num_layers, f"{name}_devices": len(devices),
            f"{name}_platform": devices[0].platform, f"{name}_device_kind": devices[0].device_kind,
            f"{name}_compile_s": compile_s,
            f"{name}_fsdp_gather_bytes": 2 * max_layer_bytes(params["trunk"])}


def max_layer_bytes(trunk) -> int:
    """Unsharded bytes of the largest trunk layer: what FSDP gathers at a time."""
    import jax
    return max(sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(lp)) for lp in trunk["layers"])


def load_shares(paths) -> list[tuple[str, dict]]:
    shares = []
    for path in paths:
        with open(path) as f:
            shares.append((path, json.load(f)))
    return shares


def gpu_share_estimate(r: dict, n: str, shares) -> dict:
    """Per-device bytes of stage ``n`` (e.g. 'stage2', already in ``r``) on the GPU mesh: this (fake-device) plan's sharded parameters
    and optimizer state + the temporaries XLA:GPU planned for one device's share of the step (a
    ``--devices=0 --train-examples=1`` run on one GPU, same layers, rows per device and sequence) +
    two layers of gathered FSDP weights (the layer in use and the next one, prefetched).
    XLA:CPU keeps every layer's intermediates even under remat (bench/remat_probe.py), so its
    temporaries overstate a rematerialised step; XLA:GPU's do not."""
    rows_here = r[f"{n}_rows"] // max(r["devices"], 1)
    for path, g in shares:
        if f"{n}_temp_bytes" not in g:
            continue
        layers = g.get(f"{n}_layers") or next((int(o.split("=")[1]) for o in g.get("overrides", [])
                                              if o.startswith("--config.trunk.num_layers=")), None)
        # Fields older share files lack are not compared (the session-7 H200 files predate
        # _platform/_layers/_q_chunk; they ran remat and q_chunk 512 on trunk attention only).
        same = (layers == r[f"{n}_layers"] and g[f"{n}_seq"] == r[f"{n}_seq"] and g[f"{n}_rows"] == rows_here
                and g.get("devices", 1) == 1 and g.get(f"{n}_platform", "gpu") != "cpu"
                and all(g[f"{n}_{k}"] == r[f"{n}_{k}"] for k in ("form", "kd", "dtype", "remat", "q_chunk")
                        if f"{n}_{k}" in g))
        if same:
            state = r[f"{n}_trunk_bytes"] + r[f"{n}_sidecar_bytes"] + r[f"{n}_optimizer_bytes"]
            return {f"{n}_gpu_temp_bytes": int(g[f"{n}_temp_bytes"]), f"{n}_gpu_share_file": os.path.relpath(path, ROOT),
                    f"per_device_bytes_{n}_gpu_estimate": state + int(g[f"{n}_temp_bytes"]) + r[f"{n}_fsdp_gather_bytes"]}
    return {}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/model/pdt.py",
                    help="model config; its fields can be overridden: --config.trunk.num_layers=2")
    ap.add_argument("--devices", type=int, default=8,
                    help="fake CPU devices; 0: the backend's own devices (on one GPU with --train-examples=1: "
                         "one device's share of the 8-GPU plan, as XLA:GPU compiles it)")
    ap.add_argument("--mock-gpus", type=int, default=0,
                    help="on one GPU: compile for this many GPUs (one real, the rest mocked; "
                         "JAX_MOCK_GPU_TOPOLOGY=1xNx1): XLA:GPU's per-device plan of the real sharded program")
    ap.add_argument("--gpu-target", choices=sorted(GPU_TARGETS), default=None,
                    help="without a GPU: compile the stage plans for --devices GPUs of this kind (deviceless "
                         "XLA:GPU; needs jax's CUDA plugin: bench/gpu_aot_plan.sh)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--context", type=int, default=8192, help="KV-cache length (tokens per row)")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--plans", default="infer,stage0,stage1,stage2,stage3,stage4",
                    help="comma-separated: infer, stage0 ... stage4")
    ap.add_argument("--train-seq", type=int, default=2048)
    ap.add_argument("--train-examples", type=int, default=None, help="examples per micro-batch (default: the stage's)")
    ap.add_argument("--train-accum", type=int, default=None)
    ap.add_argument("--gpu-share", nargs="*", default=[],
                    help="JSON files of `--devices=0 --train-examples=1` runs on one GPU: each stage's per-device "
                         "estimate on the GPU mesh uses their temporaries (see gpu_share_estimate)")
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    _fake_devices(args.devices, args.mock_gpus, args.gpu_target)

    import jax

    from pdt_jax import config_files

    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    devices = None
    if args.gpu_target:
        if "infer" in plans:
            raise SystemExit("--gpu-target plans the train steps (--plans=stage0,...); the infer plan runs on "
                             "fake CPU devices or a GPU")
        devices = gpu_topology_devices(args.gpu_target, args.devices)
    shown = devices or jax.devices()
    cfg = config_files.pdt_config(config_files.load(args.config, overrides))
    print(f"memory plan, {args.config} {' '.join(overrides)}, {len(shown)} {shown[0].platform} "
          f"devices ({shown[0].device_kind}), mesh {dict(cfg.mesh)}", flush=True)
    r = {"config": args.config, "overrides": overrides, "devices": len(shown),
         "mock_gpus": args.mock_gpus, "gpu_target": args.gpu_target or "", "platform": shown[0].platform,
         "device_kind": shown[0].device_kind}
    train_overrides = [o.replace("--config.", "--config.model.", 1) for o in overrides]
    shares = load_shares(args.gpu_share)
    for p in plans:
        if not p.startswith("stage"):
            continue
        t = train_plan(int(p[5:]), train_overrides, args.train_examples, args.train_seq, args.train_accum,
                       devices=devices)
        r.update(t)
        print(f"{p}: {t[p + '_rows']} rows x {t[p + '_seq']} tokens (x{t[p + '_accum']} micro-batches), form "
              f"{t[p + '_form']}, KD {t[p + '_kd']}, mesh {t[p + '_mesh']}, {t[p + '_trainable_params'] / 1e6:.0f} M "
              f"trainable (compiled in {t[p + '_compile_s']:.0f} s)")
        for label, key in (("trunk", "trunk_bytes"), ("sidecar", "sidecar_bytes"), ("optimizer", "optimizer_bytes"),
                           ("temporaries", "temp_bytes")):
            print(f"  {label:<28}{t[p + '_' + key] / GB:>10.2f} GB")
        print(f"  {p.upper() + ' per device':<28}{t['per_device_bytes_' + p] / GB:>10.2f} GB   (XLA:{t[p + '_platform'].upper()}'s "
              f"temporaries)", flush=True)
        est = gpu_share_estimate(r, p, shares)
        r.update(est)
        if f"per_device_bytes_{p}_gpu_estimate" in est:
            print(f"  {'XLA:GPU temporaries, 1 share':<28}{est[p + '_gpu_temp_bytes'] / GB:>10.2f} GB   "
                  f"({est[p + '_gpu_share_file']})")
            print(f"  {'FSDP gather (2 layers)':<28}{t[p + '_fsdp_gather_bytes'] / GB:>10.2f} GB")
            print(f"  {p.upper() + ' per GPU, estimate':<28}{est['per_device_bytes_' + p + '_gpu_estimate'] / GB:>10.2f} GB"
                  f"   (target <= 80 GB)", flush=True)
        if args.json:   # after every plan: a long run keeps what it measured
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
    if "infer" not in plans:
        return r
    r.update(infer_plan(cfg, args.prompts, args.context, args.prompt_tokens))
    if cfg.trunk.dtype == "bfloat16":
        # XLA:CPU has no bf16 dot: it converts the weights to f32 inside the program, so the bf16
        # plan's temporaries hold f32 copies of every layer's weights that a GPU never makes. The
        # same program compiled in f32 has no such copies (and activations twice as wide as bf16):
        # its temporaries bound what a GPU needs.
        f32 = infer_plan(dataclasses.replace(cfg, trunk=cfg.trunk.replace(dtype="float32")), args.prompts,
                         args.context, args.prompt_tokens)
        r["infer_temp_bytes_f32_program"] = f32["infer_temp_bytes"]
        r["per_device_bytes_infer_gpu_estimate"] = (r["per_device_bytes_infer"] - r["infer_temp_bytes"]
                                                    + f32["infer_temp_bytes"])
    print(f"infer: {r['infer_prompts']} prompts x {r['infer_streams']} streams, context {r['infer_context']}, "
          f"{r['infer_dtype']}, {r['infer_layers']} layers, mesh {r['infer_mesh']}, MoE {r['infer_moe_impl']} "
          f"(compiled in {r['infer_compile_s']:.0f} s)")
    for name, key in (("weights (trunk + sidecar)", "infer_weights_bytes"), ("  trunk", "infer_trunk_bytes"),
                      ("  sidecar", "infer_sidecar_bytes"), ("KV caches", "infer_kv_cache_bytes"),
                      ("bus", "infer_bus_bytes"), ("per-row state", "infer_row_state_bytes"),
                      ("round temporaries", "infer_temp_bytes"), ("ROUND per device", "per_device_bytes_infer"),
                      ("prefill temporaries", "infer_start_temp_bytes"),
                      ("START per device", "per_device_bytes_infer_start")):
        print(f"  {name:<28}{r[key] / GB:>10.2f} GB")
    if "per_device_bytes_infer_gpu_estimate" in r:
        print(f"  {'round temporaries, f32 program':<28}{r['infer_temp_bytes_f32_program'] / GB:>10.2f} GB   "
              f"(no CPU bf16->f32 weight copies)")
        print(f"  {'ROUND per device, GPU est.':<28}{r['per_device_bytes_infer_gpu_estimate'] / GB:>10.2f} GB")
    print(f"  fits an 80 GB H100: {r['infer_fits_h100']} (the bf16 CPU plan, an upper bound)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()

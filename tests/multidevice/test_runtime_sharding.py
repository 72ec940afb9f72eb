"""The runtime on a mesh of 8 fake CPU devices (a subprocess, so the device count is set before jax
starts): launch/infer.py on a data × tensor × expert mesh writes the same tokens, rollbacks and
notes as on one device, with parameters, KV caches and the bus split across devices; and the round
program at the real GPT-OSS-20B widths compiles there within an H100's memory."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from launch import infer
    from pdt_jax import config_files, model as pdt
    from pdt_jax.runtime.device import DeviceEngine
    from pdt_jax.runtime.options import RuntimeOptions
    from pdt_jax.runtime.run import run_pdt
    from pdt_jax.sidecar.checkpoint import save_sidecar
    from pdt_jax.tokenizer import Tokenizer
    from pdt_jax.trunk import Trunk

    tmp = sys.argv[1]
    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))
    Trunk.random(cfg.trunk, seed=0, init_std=0.1).save(f"{tmp}/ckpt/trunk")
    side = pdt.init_sidecar(cfg, jax.random.key(1))
    keys = iter(jax.random.split(jax.random.key(2), 16))
    side["layers"] = [dict(lp, snc=dict(lp["snc"], o=0.5 * jax.random.normal(next(keys), lp["snc"]["o"].shape)),
                           adapter=dict(lp["adapter"], up=0.5 * jax.random.normal(next(keys), lp["adapter"]["up"].shape)),
                           snc_gate=jnp.float32(2.0), adapter_gate=jnp.float32(2.0)) for lp in side["layers"]]
    side["agree"] = dict(side["agree"], b2=jnp.float32(0.2))  # some blocks fail the readiness gate
    save_sidecar(f"{tmp}/ckpt/sidecar.safetensors", side, cfg.trunk, cfg.sidecar)
    with open(f"{tmp}/prompts.jsonl", "w") as f:  # 3 prompts: on data=2 the batch is padded to 4
        f.write('{"prompt": "Tell me about Velmora."}\\n{"prompt": "Where is Port Salvine?"}\\n{"prompt": "Hi."}\\n')
    out = {}
    for name, mesh in (("one", "data=1"), ("mesh", "data=2,tensor=2,expert=2")):
        code = infer.main(["--config=configs/model/pdt.py:tiny", "--checkpoint", f"{tmp}/ckpt", "--prompts-file",
                           f"{tmp}/prompts.jsonl", "--max-new-tokens", "16", "--read-lag-delta", "0",
                           "--mesh", mesh, "--replay-artifact-dir", f"{tmp}/art-{name}",
                           "--output", f"{tmp}/out-{name}"])
        assert code == 0, name
        ms = [json.load(open(f"{tmp}/out-{name}/manifest-{i:04d}.json")) for i in range(3)]
        out[name + "_files"] = sorted(os.listdir(f"{tmp}/out-{name}"))
        out[name] = {"tokens": [[s["token_ids"] for s in m["streams"].values()] for m in ms],
                     "rollbacks": [[(r["stream"], r["stride_index"], r["removed_token_ids"]) for r in m["rollbacks"]]
                                   for m in ms],
                     "mesh": ms[0]["config"]["mesh"]}
        notes = np.concatenate([np.load(os.path.join(f"{tmp}/art-{name}", f))["note"]
                                for f in sorted(os.listdir(f"{tmp}/art-{name}")) if f.startswith("rounds-")])
        np.save(f"{tmp}/notes-{name}.npy", notes)
    # The padded run replays exactly, and the padding prompt's tokens reach no output.
    from pdt_jax.runtime.manifest import deterministic_view
    from pdt_jax.runtime.replay import replay
    replayed, events = replay(f"{tmp}/art-mesh")
    mesh_ms = [json.load(open(f"{tmp}/out-mesh/manifest-{i:04d}.json")) for i in range(3)]
    out["replay_equal"] = all(deterministic_view(a) == deterministic_view(b) for a, b in zip(mesh_ms, replayed))
    out["replay_prompts"] = sorted({e["prompt_index"] for e in events})
    notes_one = np.load(f"{tmp}/notes-one.npy")
    notes_mesh = np.load(f"{tmp}/notes-mesh.npy")[:, :notes_one.shape[1]]   # rows of the padding prompt last
    out["notes_max_diff"] = float(np.abs(notes_one - notes_mesh).max())
    out["notes_max_abs"] = float(np.abs(notes_one).max())

    # Where the arrays live after a run on the mesh.
    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny", ["--config.mesh.data=2",
                                                    "--config.mesh.tensor=2", "--config.mesh.expert=2"]))
    trunk = Trunk.from_pretrained(f"{tmp}/ckpt/trunk", mesh=cfg.make_mesh(), rules=cfg.rules)
    engine = DeviceEngine(cfg, trunk.params, side, RuntimeOptions(max_new_tokens=8), 2, 64)
    run_pdt(cfg, trunk.params, side, Tokenizer.tiny(), ["a", "b"], RuntimeOptions(max_new_tokens=8), engine=engine)
    spec = lambda x: [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
    split = lambda x: not x.sharding.is_fully_replicated
    out["restored_onto"] = spec(trunk.params["layers"][0]["gate_up"])
    out["specs"] = {"gate_up": spec(engine.trunk_p["layers"][0]["gate_up"]), "q": spec(engine.trunk_p["layers"][0]["q"]),
                    "embed": spec(engine.trunk_p["embed"]), "snc_q": spec(engine.side_p["layers"][0]["snc"]["q"]),
                    "cache_k": spec(engine.cache.k[1]), "cache_length": spec(engine.cache.length),
                    "bus_notes": spec(engine.bus.notes), "small_logits": spec(engine.small.logits)}
    fraction = lambda tree: (sum(x.nbytes for x in jax.tree.leaves(tree) if split(x))
                             / sum(x.nbytes for x in jax.tree.leaves(tree)))
    out["split_fraction"] = {"trunk": fraction(engine.trunk_p), "sidecar": fraction(engine.side_p),
                             "cache": fraction(engine.cache), "bus": fraction(engine.bus),
                             "row_state": fraction(engine.small)}
    print("RESULT" + json.dumps(out))
""")


def run_script(script, *args, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_infer_on_a_mesh_writes_what_one_device_writes(tmp_path):
    r = run_script(SCRIPT, str(tmp_path))
    assert r["one"]["mesh"]["data"] == 1 and r["mesh"]["mesh"] == {"data": 2, "fsdp": 1, "expert": 2, "tensor": 2}
    assert r["one"]["tokens"] == r["mesh"]["tokens"]
    assert r["mesh_files"] == ["manifest-0000.json", "manifest-0001.json", "manifest-0002.json"]  # no padding's
    assert r["replay_equal"] and r["replay_prompts"] == [0, 1, 2]
    assert r["one"]["rollbacks"] == r["mesh"]["rollbacks"] and any(r["one"]["rollbacks"])
    assert r["notes_max_diff"] <= 1e-4 * max(1.0, r["notes_max_abs"])
    s = r["specs"]
    assert r["restored_onto"] == ["expert", None, "tensor"]        # read straight onto its sharding
    assert s["gate_up"] == ["expert", None, "tensor"] and s["q"] == [None, "tensor", None]
    assert s["embed"] == ["tensor", None] and s["snc_q"] == [None, "tensor", None]
    assert s["cache_k"] == ["data", "tensor", None, None] and s["cache_length"] == ["data"]
    assert s["bus_notes"] == ["data", None, None, None] and s["small_logits"] == ["data", None]
    # Every cache, bus and per-row array is split over the prompts; nearly all of the trunk's bytes
    # and most of the sidecar's (its small heads stay whole) are split over tensor / expert.
    f = r["split_fraction"]
    assert f["cache"] == f["bus"] == f["row_state"] == 1.0
    assert f["trunk"] > 0.95 and f["sidecar"] > 0.5


def test_round_program_at_20b_widths_fits_an_h100(tmp_path):
    """bench/memory_plan.py compiles the round and start programs at GPT-OSS-20B's widths (2 of 24
    layers, to keep the suite fast; the bench runs all 24) for 4 prompts × 3 streams and an 8192-token
    cache on 8 fake devices, and reports per-device bytes."""
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=ROOT)  # memory_plan.py adds the 8 fake devices to XLA_FLAGS
    proc = subprocess.run([sys.executable, "bench/memory_plan.py", "--plans=infer", "--config.trunk.num_layers=2",
                           "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["devices"] == 8 and r["infer_mesh"]["expert"] == 8 and r["infer_rows"] == 12
    assert r["infer_context"] == 8192 and r["infer_dtype"] == "bfloat16"
    for key in ("infer_weights_bytes", "infer_kv_cache_bytes", "infer_bus_bytes", "infer_temp_bytes"):
        assert r[key] > 0, key
    # The experts are split 8 ways: a device holds 2.8 GB of the 5.6 GB 2-layer trunk.
    assert r["infer_trunk_bytes"] < 3.0e9
    assert r["per_device_bytes_infer"] <= 80e9 and r["per_device_bytes_infer_start"] <= 80e9


def test_train_step_plan_at_20b_widths_and_its_gpu_share_estimate(tmp_path):
    """bench/memory_plan.py compiles stage 2's train step at GPT-OSS-20B widths (1 layer, 256
    tokens) on the 8-device FSDP mesh, and folds a GPU share's temporaries into the per-GPU
    estimate: sharded state + those temporaries + two gathered layers, exactly."""
    share = tmp_path / "share.json"
    share.write_text(json.dumps({"devices": 1, "stage2_temp_bytes": 7_000_000_000, "stage2_layers": 1,
                                 "stage2_seq": 256, "stage2_rows": 3, "stage2_platform": "gpu",
                                 "stage2_form": "passes", "stage2_remat": True, "stage2_q_chunk": 512}))
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "bench/memory_plan.py", "--plans=stage2", "--config.trunk.num_layers=1",
                           "--train-seq=256", "--train-accum=1", "--gpu-share", str(share), "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["stage2_mesh"] == {"data": 1, "fsdp": 8, "expert": 1, "tensor": 1} and r["stage2_rows"] == 24
    assert r["stage2_remat"] and r["stage2_q_chunk"] == 512 and r["stage2_form"] == "passes"
    state = r["stage2_trunk_bytes"] + r["stage2_sidecar_bytes"] + r["stage2_optimizer_bytes"]
    assert r["stage2_trunk_bytes"] < 0.2 * 3.96e9          # the 1-layer trunk (3.96 GB) split 8 ways
    assert r["per_device_bytes_stage2_gpu_estimate"] == state + 7_000_000_000 + r["stage2_fsdp_gather_bytes"]
    assert r["stage2_gpu_share_file"].endswith("share.json")


def test_the_deviceless_gpu_plan_says_what_it_needs_when_the_cuda_plugin_is_absent(tmp_path):
    """``--gpu-target`` compiles for GPUs that are not there through jax's CUDA plugin
    (bench/gpu_aot_plan.sh installs it outside the venv; not in the test environment): without it
    the run stops before compiling anything, naming the flag and the packages; it never plans the
    infer program (which runs on fake CPU devices or a GPU)."""
    import importlib.util
    if importlib.util.find_spec("jax_plugins") is not None:
        pytest.skip("a jax plugin package is installed here")
    env = dict(os.environ, PYTHONPATH=ROOT)
    base = [sys.executable, "bench/memory_plan.py", "--gpu-target=h100", "--config.trunk.num_layers=1"]
    proc = subprocess.run(base + ["--plans=stage4"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--gpu-target=h100" in proc.stderr and "jax-cuda13-plugin" in proc.stderr
    proc = subprocess.run(base + ["--plans=infer"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--gpu-target plans the train steps" in proc.stderr

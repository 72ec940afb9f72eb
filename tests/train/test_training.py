"""The training job on the tiny model: a curriculum (stages 0–3) on a small fixed dataset, run once
per module and inspected by every test — losses fall, exactly the trainable set changes at each
stage boundary, the trunk is never written, TensorBoard and telemetry files are complete, the
exported sidecar is what launch/infer.py loads and the runtime then decodes what training's exact
forward predicts; a SIGKILLed stage resumes to the same parameters; bad configs fail before any
compile, naming the field or file."""
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from tensorboard.backend.event_processing import event_accumulator

from pdt_jax import config_files
from pdt_jax.train import loop
from pdt_jax.train.losses import TERMS
from pdt_jax.trunk.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12
# Stage 3 trains nine terms at once under one clipped gradient (lr 0.01): its coverage loss needs a
# few more steps than 12 to come down past an early bump.
STAGE_STEPS = (STEPS, STEPS, STEPS, 18)


def overrides(tmp: Path) -> list[str]:
    return [f"--config.trunk_checkpoint={tmp}/trunk", f"--config.data.export_dir={tmp}/data/export",
            f"--config.data.teacher_notes_cache={tmp}/notes", "--config.data.buckets=(96,)",
            "--config.data.max_records=4", "--config.train.batch_size=2",
            "--config.train.log_every=1", "--config.train.eval_every=1000", "--config.train.checkpoint_every=2",
            "--config.train.eval_batches=1", "--config.train.progress=False", "--config.train.lr=0.01",
            "--config.train.warmup_steps=2", "--config.train.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The curriculum, compiled with a persistent compilation cache that the launch/train.py
    subprocesses below share (their stage 0 is the same program)."""
    tmp = tmp_path_factory.mktemp("train")
    config = config_files.load("configs/curriculum.py:tiny", overrides(tmp) + [
        f"--config.steps_per_stage.stage{i}={n}" for i, n in enumerate(STAGE_STEPS)])
    previous = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        results = loop.run(config, tmp / "run")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    trunk_files = {p.relative_to(tmp / "trunk").as_posix(): p.read_bytes()
                   for p in sorted((tmp / "trunk").rglob("*")) if p.is_file()}
    return tmp, config, results, trunk_files


def subprocess_env(tmp: Path, devices: int = 1) -> dict:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if devices > 1:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    return env


def scalars(workdir: Path) -> dict[str, list[float]]:
    acc = event_accumulator.EventAccumulator(str(workdir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def flat(side) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(side)[0]}


def test_the_trained_terms_fall_and_exactly_the_trainable_set_changes(run):
    tmp, config, results, _ = run
    cfg = config_files.pdt_config(config.model)
    assert [r["step"] for r in results] == list(STAGE_STEPS) and all(r["finished"] for r in results)
    stages = json.loads((tmp / "run" / "train_run_stages.json").read_text())
    assert [s["stage_name"] for s in stages] == ["planner_pretrain", "stream_bootstrap", "notes_bus", "commit_control"]
    fresh = config_files.load("configs/stage0.py:tiny", overrides(tmp))
    before = {"sidecar": loop.initial_sidecar(fresh, cfg, cfg.make_mesh())[0]}
    previous = set()
    for stage, result in zip(stages, results):
        trainable = set(stage["actions"]["trainable"])
        assert previous < trainable          # the set grows at every boundary
        previous = trainable
        a, b = flat(before["sidecar"]), flat(result["params"]["sidecar"])
        changed = {k for k in a if not np.array_equal(a[k], b[k])}
        names = {"sidecar/" + k.replace("['", "").replace("']", "/").replace("[", "").replace("]", "/").rstrip("/")
                 for k in changed}
        assert names == {t for t in trainable if t.startswith("sidecar/")}, stage["stage_name"]
        before = result["params"]
        # Every term the stage trains falls on the fixed four records.
        logged = scalars(Path(result["workdir"]))
        weights = config.stages[f"stage{stage['stage_index']}"].losses
        for term in TERMS:
            if float(weights[term]) > 0:
                series = logged[f"loss/{term}"]
                assert len(series) == STAGE_STEPS[stage["stage_index"]]
                assert np.mean(series[-3:]) < np.mean(series[:3]), (stage["stage_name"], term, series)


def test_the_trunk_is_never_written(run):
    tmp, config, results, trunk_files = run
    cfg = config_files.pdt_config(config.model)
    from pdt_jax.trunk.checkpoint import load_converted
    _, trunk = load_converted(str(tmp / "trunk"))
    for r in results:
        for x, y in zip(jax.tree.leaves(trunk), jax.tree.leaves(r["params"]["trunk"])):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    assert trunk_files and all(p.startswith(("params", "pdt_trunk")) or True for p in trunk_files)
    assert cfg.trunk.num_layers == 2


def test_tensorboard_and_telemetry_files_are_complete(run):
    tmp, config, results, _ = run
    last = Path(results[-1]["workdir"])
    logged = scalars(last)
    expected = {"loss", "lr", "grad_norm", "perf/step_time_s", "perf/tokens_per_s", "perf/flops_per_s",
                "validation/readiness/roc_auc", "validation/readiness/retry_roc_auc", "validation/coverage/precision",
                "validation/coverage/recall",
                "validation/coverage/f1", "validation/loss", "gates/snc_0", "gates/adapter_1"}
    expected |= {f"loss/{t}" for t in TERMS if float(config.stages.stage3.losses[t]) > 0}
    assert expected <= set(logged), expected - set(logged)
    acc = event_accumulator.EventAccumulator(str(last / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "samples/target" in acc.Tags()["tensors"]
    thresholds = json.loads((last / "agreement_thresholds.json").read_text())
    assert len(thresholds["roc_points"]) == 19 and thresholds["selected_point"] in thresholds["roc_points"]
    assert thresholds["agreement_threshold"] == thresholds["selected_point"]["threshold"]
    report = json.loads((last / "training_report.json").read_text())
    assert report["global_step"] == STAGE_STEPS[3] and report["train_metrics"]["loss"]["count"] == STAGE_STEPS[3]
    manifest = json.loads((last / "train_manifest.json").read_text())
    for key in ("git_sha", "config", "data_fingerprint", "plan_vocab_size", "plan_hash_buckets", "plan_hash_salt",
                "agreement_threshold", "notes_schema_version"):
        assert key in manifest, key
    assert manifest["config"]["stage"]["name"] == "commit_control"
    exported = json.loads((last / "export" / "sidecar_config.json").read_text())
    assert exported["readiness_threshold"] == thresholds["agreement_threshold"]


def test_launch_infer_loads_the_trained_sidecar_and_decodes_what_training_predicts(run):
    """The export is a PDT checkpoint: launch/infer.py's loader gets the trained parameters bit
    for bit and γ from the export; the runtime's greedy run (every block committed) then has the
    notes, readiness and token margins of training's exact forward on the same text."""
    from acting import Spy
    from pdt_jax.runtime import cli, program
    from pdt_jax.runtime.device import DeviceEngine
    from pdt_jax.runtime.options import RuntimeOptions
    from pdt_jax.runtime.run import run_pdt
    from pdt_jax.train import forward as train_forward

    tmp, config, results, _ = run
    export = results[-1]["export"]
    c = config_files.load("configs/infer.py")
    with c.unlocked():
        c.checkpoint = export
    cfg0 = config_files.pdt_config(config.model)
    cfg, trunk, side, tok = cli.load_model(cfg0, c, cfg0.make_mesh())
    for x, y in zip(jax.tree.leaves(side), jax.tree.leaves(results[-1]["params"]["sidecar"])):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert cfg.sidecar.readiness_threshold == results[-1]["gamma"]
    prompt = "Write an encyclopedic article about Vaipound."
    # Every block commits and the gate stays at training's g = 1 (annealing would lower it).
    opts = RuntimeOptions(max_new_tokens=16, readiness_threshold=0.0,
                          gate_annealing=dataclasses.replace(RuntimeOptions().gate_annealing, enabled=False))
    spy = Spy(DeviceEngine(cfg, trunk, side, opts, 1, 128))
    m = run_pdt(cfg, trunk, side, tok, [prompt], opts, engine=spy)[0]
    names = cfg.sidecar.stream_names
    row = tok.prompt(prompt)
    gen = [m["streams"][n]["token_ids"] for n in names]
    T = len(row) + 16
    batch = {"tokens": np.zeros((1, 3, T), np.int32), "lengths": np.zeros((1, 3), np.int32),
             "target_start": np.full((1, 3), len(row), np.int32),
             "plan_ids": np.asarray(m["plan"]["slot_ids"], np.int32)[None]}
    for k, g in enumerate(gen):
        batch["tokens"][0, k, :len(row) + len(g)] = row + g
        batch["lengths"][0, k] = len(row) + len(g)
    out = jax.device_get(jax.jit(lambda t, s, b: train_forward.forward_exact(t, s, b, cfg=cfg))(trunk, side, batch))
    for v, r in enumerate(spy.rounds):
        for k in range(3):
            np.testing.assert_allclose(out["bus_notes"][0, k, v], r["note"][k], atol=1e-4, rtol=0)
            np.testing.assert_allclose(out["readiness_logits"][0, k, v], r["readiness"][k], atol=1e-4, rtol=0)
            s = len(row)
            pos = np.arange(s + 4 * v - 1, min(s + 4 * v + 4, batch["lengths"][0, k]) - 1)
            margins = np.asarray(program.top2_margin(jnp.asarray(out["lm_logits"][k, pos])))
            np.testing.assert_allclose(margins, r["margins"][k][r["produced"][k]], atol=1e-4, rtol=0)


def test_a_killed_stage_resumes_to_the_same_parameters(run):
    """Stage 0 alone, as launch/train.py runs it, SIGKILLed at a random step after its first
    checkpoint, then run again: its final sidecar equals the curriculum's uninterrupted stage 0."""
    tmp, config, results, _ = run
    work = tmp / "killed"
    cmd = [sys.executable, "launch/train.py", "--config=configs/stage0.py:tiny", f"--workdir={work}",
           f"--config.train.steps={STEPS}"] + overrides(tmp)
    env = subprocess_env(tmp)
    kill_after = random.Random().randint(5, STEPS - 2)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = [p for p in (work / "checkpoints").glob("[0-9]*") if p.name.isdigit()] if (work / "checkpoints").exists() else []
        events = list((work / "tb").glob("events*")) if (work / "tb").exists() else []
        done = max((len(s) for s in scalars(work).values()), default=0) if events and ckpts else 0
        if done >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    assert not (work / "export").exists()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed" in second.stderr
    got = load_file(str(work / "export" / "sidecar.safetensors"))
    want = load_file(str(Path(results[0]["export"]) / "sidecar.safetensors"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_sharded_steps_on_eight_devices_equal_one_device(run):
    """Stage 1 on a data 2 × tensor 2 × expert 2 mesh of 8 fake CPU devices (a subprocess), from the
    curriculum's stage-0 export: its first 2 steps' losses and its parameters after them equal
    the curriculum's stage 1 on one device (its step-2 checkpoint)."""
    tmp, config, results, _ = run
    work = tmp / "mesh"
    script = (
        "import sys, json, jax, numpy as np\n"
        "jax.config.update('jax_default_matmul_precision', 'highest')\n"
        "from pdt_jax import config_files\n"
        "from pdt_jax.train import loop\n"
        "c = config_files.load('configs/stage1.py:tiny', sys.argv[2:])\n"
        "r = loop.run_stage(c, sys.argv[1], stop_after=2)\n"
        "sh = r['params']['sidecar']['layers'][0]['adapter']['down'].sharding\n"
        "np.savez(sys.argv[1] + '/params.npz', **{jax.tree_util.keystr(p): np.asarray(x) for p, x in\n"
        "         jax.tree_util.tree_flatten_with_path(r['params']['sidecar'])[0]})\n"
        "json.dump({'devices': len(jax.devices()), 'mesh': dict(sh.mesh.shape), 'step': r['step']},\n"
        "          open(sys.argv[1] + '/info.json', 'w'))\n")
    work.mkdir()
    cmd = [sys.executable, "-c", script, str(work), f"--config.train.steps={STEPS}",
           f"--config.stage.init_from={results[0]['workdir']}", "--config.model.mesh.data=2",
           "--config.model.mesh.tensor=2", "--config.model.mesh.expert=2"] + overrides(tmp)
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(tmp, devices=8), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((work / "info.json").read_text())
    assert info == {"devices": 8, "mesh": {"data": 2, "fsdp": 1, "expert": 2, "tensor": 2}, "step": 2}
    one = scalars(Path(results[1]["workdir"]))
    mesh = scalars(work)
    terms = [t for t in one if t.startswith("loss")]
    assert "loss/lm" in terms and "loss/stream" in terms
    for t in terms:
        np.testing.assert_allclose(mesh[t][:2], one[t][:2], rtol=1e-5, atol=1e-6, err_msg=t)
    import orbax.checkpoint as ocp
    saved = ocp.StandardCheckpointer().restore(Path(results[1]["workdir"]).absolute() / "checkpoints" / "2" / "state")
    want = flat(saved["params"]["sidecar"])
    got = np.load(work / "params.npz")
    assert set(got.files) == set(want)
    for k in want:
        # Relative to each tensor's norm (Adam divides by √v, so an element whose gradient is
        # near zero can move a few ulps of the other elements' scale apart: seen 2e-6 on 0.07).
        err = np.linalg.norm(got[k] - want[k]) / max(np.linalg.norm(want[k]), 1e-12)
        assert err <= 1e-5, (k, err)


@pytest.mark.parametrize("extra, message", [
    (["--config.stage.trainable=()"], "stage.trainable"),
    (["--config.stage.trainable=('sidecar/no_such_module/.*',)"], "matches no parameter"),
    (["--config.model.mesh.data=3"], "model.mesh"),
    (["--config.stage.init_from=/no/such/dir"], "stage.init_from"),
    (["--config.model.sidecar.plan_vocab_size=2048"], "plan hashing"),
    (["--config.stage.forward.form=teacher", "--config.stage.bus_mix=0.5"], "stage.bus_mix"),
    (["--config.stage.forward.q_chunk=-1"], "stage.forward.q_chunk"),
    # trunk pretraining (the 'document' form) trains the LM loss only, and the trunk
    (["--config.stage.forward.form=document"], "LM loss only"),
    (["--config.stage.forward.form=document", "--config.stage.losses.coverage=0",
      "--config.stage.losses.readiness=0", "--config.stage.losses.spec=0", "--config.stage.losses.notes=0",
      "--config.stage.losses.planner=0", "--config.stage.losses.stream=0", "--config.stage.losses.retry=0"],
     "trains the trunk"),
    # retry pairs need the streams' own notes: not the teacher form
    (["--config.stage.forward.form=teacher", "--config.stage.bus_mix=0", "--config.stage.stream_dropout=0"],
     "stage.losses.retry"),
])
def test_bad_configs_fail_before_compiling_naming_the_field(run, extra, message, tmp_path):
    tmp = run[0]
    from pdt_jax.runtime import program
    config = config_files.load("configs/stage3.py:tiny", overrides(tmp) + extra)
    before = dict(program.TRACE_COUNTS)
    with pytest.raises((ConfigError, ValueError), match=message):
        loop.run(config, tmp_path / "w")
    assert dict(program.TRACE_COUNTS) == before


def test_unknown_fields_and_a_missing_init_from_are_refused():
    with pytest.raises(ConfigError, match="no_such_field"):
        config_files.load("configs/stage2.py:tiny", ["--config.train.no_such_field=1"])
    config = config_files.load("configs/stage2.py")   # production: stage 2 must name its start
    with pytest.raises(ConfigError, match="stage.init_from"):
        loop.check(config, num_devices=8)
    # ... and can, from the command line (the field is a string, so config_flags can override it)
    named = config_files.load("configs/stage2.py", [f"--config.stage.init_from={ROOT}"])
    assert named.stage.init_from == str(ROOT)


def test_the_20b_stages_run_remat_and_query_chunks_alone_or_in_the_curriculum():
    """The memory settings the plan measured are the ones the production configs train with, and a
    resume may change them (they change memory, not values)."""
    from configs import curriculum, stages
    blocks = [stages.get_config(i).stage for i in range(5)] + list(curriculum.get_config().stages.values())
    assert all(b.forward.remat and b.forward.q_chunk == 512 for b in blocks)
    tiny = config_files.load("configs/stage2.py:tiny")
    changed = config_files.load("configs/stage2.py:tiny", ["--config.stage.forward.q_chunk=64",
                                                            "--config.stage.forward.remat=True"])
    assert loop.config_digest(changed) == loop.config_digest(tiny)
    assert loop.config_digest(config_files.load("configs/stage2.py:tiny", ["--config.stage.gate=0.5"])) \
        != loop.config_digest(tiny)

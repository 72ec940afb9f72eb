"""The training job: one stage (``run_stage``) or the curriculum (``run``), from a config.

Order of a stage, every check before anything compiles:
  1. config checks (``check``): stage, losses, forward form, regularisers, mesh vs devices,
     ``init_from``, files — each failure names the field or file;
  2. tiny variants build what they lack (the synthetic dataset, a random trunk);
  3. the trunk from its converted checkpoint onto its shardings (read-only), the records' plan
     hashing against the model's (D5), teacher-note embeddings (cached, D6);
  4. the train state: parameters from ``init_from`` (or a resumed checkpoint of this workdir),
     optimiser state over this stage's trainable set;
  5. the loop: grain batch → jitted step; metrics fetched one step behind (the device never waits
     for the host); TensorBoard, progress bar, checkpoints, validation, non-finite guard;
  6. the end: validation, γ calibration, final checkpoint, sidecar export, telemetry files.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from pdt_jax import config_files
from pdt_jax import model as pdt
from pdt_jax import records as R
from pdt_jax import teacher_notes as TN
from pdt_jax.runtime import program
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.train import checkpointing, data, losses, telemetry
from pdt_jax.train import state as state_lib
from pdt_jax.train import step as step_lib
from pdt_jax.trunk.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
STAGE_FIELDS = {"index", "name", "trainable", "losses", "forward", "gate", "kd_temperature", "bus_mix",
                "stream_dropout", "note_noise", "init_from"}


class TrainError(RuntimeError):
    """The run cannot go on (non-finite steps, a resume under another config)."""


# ---- 1. checks ------------------------------------------------------------------------------------

def check(config: ConfigDict, num_devices: int | None = None) -> pdt.PDTConfig:
    """Every check that needs no file contents and no compile; returns the model config."""
    cfg = config_files.pdt_config(config.model)
    st = config.stage
    unknown = sorted(set(st.keys()) - STAGE_FIELDS)
    if unknown:
        raise ConfigError(f"stage: unknown field(s) {unknown}; valid: {sorted(STAGE_FIELDS)}")
    bad_terms = sorted(set(st.losses.keys()) - set(losses.TERMS))
    if bad_terms:
        raise ConfigError(f"stage.losses: unknown term(s) {bad_terms}; valid: {list(losses.TERMS)}")
    if any(float(v) < 0 for v in st.losses.values()):
        raise ConfigError("stage.losses: weights must be >= 0")
    if not any(float(v) > 0 for v in st.losses.values()):
        raise ConfigError("stage.losses: every weight is 0; the stage has nothing to learn")
    if not st.trainable:
        raise ConfigError("stage.trainable: the stage trains no parameter (give at least one regex)")
    form = st.forward.form
    if form not in step_lib.FORMS:
        raise ConfigError(f"stage.forward.form: expected one of {step_lib.FORMS}, found {form!r}")
    if int(st.forward.get("q_chunk", 0)) < 0:
        raise ConfigError(f"stage.forward.q_chunk: expected 0 (whole sequence) or a positive chunk, found "
                          f"{st.forward.q_chunk}")
    if form == "passes" and int(st.forward.passes) < 2:
        raise ConfigError(f"stage.forward.passes: the passes form needs >= 2 passes, found {st.forward.passes}")
    for field in ("bus_mix", "stream_dropout"):
        if not 0.0 <= float(st[field]) <= 1.0:
            raise ConfigError(f"stage.{field}: a probability in [0, 1], found {st[field]}")
    regs = [f for f in ("bus_mix", "stream_dropout", "note_noise") if float(st[f]) > 0]
    if regs and form == "teacher":
        raise ConfigError(f"stage.{regs[0]}: the bus regularisers act on the student's notes; stage.forward.form "
                          f"'teacher' reads the teacher's (use 'passes' or 'exact')")
    if st.init_from is None or st.init_from == "":
        raise ConfigError(f"stage.init_from: stage {st.index} ({st.name}) must start from the previous stage: "
                          f"set --config.stage.init_from=DIR (its workdir or an exported checkpoint) or 'fresh'")
    if st.init_from != "fresh" and not Path(st.init_from).exists():
        raise ConfigError(f"stage.init_from: {st.init_from!r} not found")
    tr = config.train
    for field in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "checkpoint_every",
                  "keep_checkpoints", "max_nonfinite"):
        if int(tr[field]) < 1:
            raise ConfigError(f"train.{field}: must be >= 1, found {tr[field]}")
    if float(st.losses.kd) > 0 and int(config.data.kd_context) <= 0:
        raise ConfigError("stage.losses.kd > 0 needs data.kd_context > 0 (the teacher's document tokens)")
    if form == "document":
        others = [k for k, v in st.losses.items() if float(v) > 0 and k not in ("lm", "shared")]
        if others:
            raise ConfigError(f"stage.losses: the 'document' form (trunk pretraining) trains the LM loss only "
                              f"(terms lm and shared); found {others}")
        if not any(str(r).startswith("trunk/") for r in st.trainable):
            raise ConfigError("stage.trainable: the 'document' form trains the trunk; give trunk/.*")
    if float(st.losses.get("retry", 0.0)) > 0 and form not in ("exact", "passes"):
        raise ConfigError(f"stage.losses.retry: retry pairs read the streams' own notes; stage.forward.form "
                          f"{form!r} has none (use 'exact' or 'passes')")
    buckets = tuple(int(b) for b in config.data.buckets)
    if not buckets or list(buckets) != sorted(set(buckets)):
        raise ConfigError(f"data.buckets: increasing row lengths, found {list(config.data.buckets)}")
    if max(buckets) > cfg.trunk.max_position_embeddings:
        raise ConfigError(f"data.buckets: {max(buckets)} > the trunk's {cfg.trunk.max_position_embeddings} positions")
    n = jax.device_count() if num_devices is None else num_devices
    mesh = dict(cfg.mesh)
    fixed = int(np.prod([v for v in mesh.values() if v != -1])) if mesh else 1
    if (-1 not in mesh.values() and fixed != n) or n % fixed:
        raise ConfigError(f"model.mesh: {mesh} does not fit the {n} devices")
    per_process = int(tr.batch_size) // jax.process_count()
    if per_process * jax.process_count() != int(tr.batch_size):
        raise ConfigError(f"train.batch_size {tr.batch_size} does not split over {jax.process_count()} processes")
    for name in dict(config.data.stream_prefixes):
        if name not in cfg.sidecar.stream_names:
            raise ConfigError(f"data.stream_prefixes: unknown stream {name!r}; streams: {list(cfg.sidecar.stream_names)}")
    return cfg


def uses_document_rows(st) -> bool:
    """KD rows are built for KD (prompt + the article up to and including the section) and for
    trunk pretraining (the whole article, ``data.RowSpec.article``)."""
    return float(st.losses.kd) > 0 or st.forward.form == "document"


def needs_teacher_notes(config) -> bool:
    st = config.stage
    return (st.forward.form == "teacher" or float(st.losses.notes) > 0 or float(st.losses.spec) > 0
            or float(st.bus_mix) > 0)


def config_digest(config: ConfigDict) -> str:
    """What a resume must agree on (the schedule's length and logging cadence may change)."""
    d = config.to_dict()
    for k in ("steps", "log_every", "eval_every", "checkpoint_every", "progress", "eval_batches", "text_samples"):
        d["train"].pop(k, None)
    for k in ("remat", "q_chunk"):   # memory only: a resume may change them (e.g. after running out of memory)
        d.get("stage", {}).get("forward", {}).pop(k, None)
    # A term at weight 0 is not computed: it cannot change the run, so it is not part of the digest
    # (a term added after a run started does not stop it from resuming at weight 0 — e.g. a stage-3
    # run begun before the retry term resumes with --config.stage.losses.retry=0).
    losses = d.get("stage", {}).get("losses", {})
    for k in [k for k, v in losses.items() if not float(v or 0.0)]:
        losses.pop(k)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- 2./3. inputs ---------------------------------------------------------------------------------

def _path(p: str) -> Path:
    return Path(p) if os.path.isabs(p) else Path.cwd() / p


def build_missing(config, cfg: pdt.PDTConfig, log) -> None:
    """Tiny variants: the synthetic dataset and a random trunk, when absent (with
    ``build_tokenizer``, the trunk gets a byte-level BPE of its vocabulary size trained on the
    dataset's training split, saved as its tokenizer.json)."""
    build_missing_data(config, cfg, log)
    from pdt_jax.trunk.checkpoint import save_converted
    from pdt_jax.trunk.params import init_trunk

    trunk_dir = _path(config.trunk_checkpoint)
    if not trunk_dir.exists() and config.get("build_trunk", True):
        print(f"train: building a random {cfg.trunk.num_layers}-layer trunk at {trunk_dir}", file=log)
        params = init_trunk(cfg.trunk, jax.random.key(int(config.train.seed)), 0.1)
        tmp = trunk_dir.with_name(trunk_dir.name + ".tmp")
        save_converted(str(tmp), cfg.trunk, params)
        if config.get("build_tokenizer", False):
            from pdt_jax.tokenizer import train_tiny
            rows = R.read_records(str(_path(config.data.export_dir) / "train.parquet")).to_pylist()
            texts = [r["prompt"] for r in rows] + [r["document_text"] for r in rows]
            train_tiny(texts, cfg.trunk.vocab_size).save(str(tmp / "tokenizer.json"))
        os.replace(tmp, trunk_dir)


def build_missing_data(config, cfg: pdt.PDTConfig, log) -> None:
    export = _path(config.data.export_dir)
    if not (export / "metadata.json").exists():
        from data_pipeline import pipeline
        spec = config.data.pipeline_config
        if not spec:
            raise ConfigError(f"data.export_dir {str(export)!r} has no export and data.pipeline_config is empty")
        dc = config_files.load(spec)
        with dc.unlocked():
            dc.work_dir = str(export.parent)
            dc.progress = False
            dc.export.update(cfg.sidecar.hashing_metadata())   # the model's plan hashing (D5)
            if int(config.data.pipeline_documents) > 0:
                dc.source.num_documents = int(config.data.pipeline_documents)
            if config.data.pipeline_fractions:
                dc.collate.fractions = tuple(float(f) for f in config.data.pipeline_fractions)
            dc.plans.max_plan_items = min(int(dc.plans.max_plan_items), cfg.sidecar.planner_slots)
        print(f"train: building the dataset of {spec} at {export.parent}", file=log)
        pipeline.run(dc, log=None)


def load_trunk(config, cfg: pdt.PDTConfig, mesh):
    from pdt_jax.trunk.checkpoint import load_converted

    path = _path(config.trunk_checkpoint) if config.trunk_checkpoint else None
    if path is None:
        raise ConfigError("trunk_checkpoint: set it to a converted trunk directory "
                          "(python -m converters.gpt_oss --hf DIR --out DIR; README \"Checkpoints\")")
    if not path.exists():
        raise ConfigError(f"trunk_checkpoint: {str(path)!r} not found")
    trunk_sh, _ = program.param_shardings(cfg, mesh, cfg.rules)
    tcfg, params = load_converted(str(path), dtype=cfg.trunk.dtype, shardings=trunk_sh)
    if tcfg.replace(dtype=cfg.trunk.dtype) != cfg.trunk.replace(dtype=cfg.trunk.dtype):
        raise ConfigError(f"trunk_checkpoint: {path} holds a trunk whose config differs from model.trunk")
    return params


def check_records(config, cfg: pdt.PDTConfig) -> Path:
    export = _path(config.data.export_dir)
    meta = export / "metadata.json"
    if not meta.exists():
        raise ConfigError(f"data.export_dir: {str(meta)!r} not found (run python -m data_pipeline run ...)")
    hashing = R.read_hashing(str(meta))
    want = cfg.sidecar.hashing_metadata()
    if hashing.to_dict() != {k: want[k] for k in hashing.to_dict()}:
        raise ConfigError(f"{meta}: the records' plan hashing {hashing.to_dict()} differs from the model's "
                          f"{want} (D5); they must never be mixed")
    for split in ("train", "validation"):
        path = export / f"{split}.parquet"
        if not path.exists():
            raise ConfigError(f"data.export_dir: {path} not found")
        if R.read_records(str(path)).num_rows == 0:
            raise ConfigError(f"data.export_dir: {path} holds no record (training needs train and validation records)")
    return export


# ---- 4. state -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _fresh_sidecar(cfg: pdt.PDTConfig, mesh):
    _, shardings = program.param_shardings(cfg, mesh, cfg.rules)
    return jax.jit(lambda k: pdt.init_sidecar(cfg, k), out_shardings=shardings), shardings


def initial_sidecar(config, cfg, mesh):
    """(sidecar parameters on their shardings, where they came from): a fresh sidecar (seeded by
    ``train.seed``) or the one ``stage.init_from`` names."""
    src = config.stage.init_from
    init, shardings = _fresh_sidecar(cfg, mesh)
    if src == "fresh":
        return init(jax.random.key(int(config.train.seed) + 1)), None
    path = Path(src)
    exported = path / "export" / "sidecar.safetensors" if (path / "export").exists() else path / "sidecar.safetensors"
    if exported.exists():
        from pdt_jax.sidecar.checkpoint import load_sidecar
        side = load_sidecar(str(exported), cfg.trunk, cfg.sidecar)
        return jax.device_put(side, shardings), str(exported)
    raise ConfigError(f"stage.init_from: {src!r} has neither export/sidecar.safetensors (a finished stage's "
                      f"workdir) nor sidecar.safetensors (an exported checkpoint)")


# ---- the stage ------------------------------------------------------------------------------------

def run_stage(config: ConfigDict, workdir: str | Path, log=sys.stderr, stop_after: int | None = None,
              stages_file: Path | None = None) -> dict:
    """Trains one stage in ``workdir`` (resuming what is there). ``stop_after``: return after that
    many steps of this call (tests); ``stages_file``: the ``train_run_stages.json`` this stage's
    record joins (default: the workdir's). Returns {workdir, step, finished, params (the last
    parameters), and when finished: validation, gamma, export}."""
    workdir = Path(workdir)
    stages_file = Path(stages_file) if stages_file else workdir / "train_run_stages.json"
    cfg = check(config)
    mesh = cfg.make_mesh()
    if config.build_missing:
        build_missing(config, cfg, log)
    export = check_records(config, cfg)
    trunk = load_trunk(config, cfg, mesh)
    tokenizer = Tokenizer.for_model(config.tokenizer or None, config.trunk_checkpoint or None, cfg.trunk.vocab_size)
    sc = cfg.sidecar
    notes = None
    if needs_teacher_notes(config):
        cache = TN.build(trunk, cfg.trunk, tokenizer, export, _path(config.data.teacher_notes_cache), sc.notes_dim,
                         log=log)
        notes = {split: TN.load(cache, split) for split in ("train", "validation")}
    st, tr = config.stage, config.train
    spec = data.RowSpec(num_streams=cfg.K, block_size=sc.block_size, lag=sc.lag, plan_slots=sc.planner_slots,
                        notes_dim=sc.notes_dim, buckets=tuple(int(b) for b in config.data.buckets),
                        kd_context=int(config.data.kd_context) if uses_document_rows(st) else 0,
                        stream_prefixes=tuple(sorted(dict(config.data.stream_prefixes).items())),
                        system=config.data.system or None, article=st.forward.form == "document")
    feat = lambda split: data.Featurizer(spec, tokenizer, None if notes is None else notes[split])
    train_ds = data.dataset(export / "train.parquet", feat("train"), spec, int(tr.batch_size), int(tr.grad_accum),
                            seed=int(config.data.seed), max_records=int(config.data.max_records))

    side, init_source = initial_sidecar(config, cfg, mesh)
    params = {"sidecar": side, "trunk": trunk}
    chosen = state_lib.trainable_paths(params, tuple(st.trainable))
    trains_trunk = any(p.startswith("trunk/") for p in chosen)
    tx, sched = state_lib.optimizer(tr)
    state = state_lib.create(params, chosen, tx, int(tr.seed))
    static = step_lib.StepStatic.from_stage(st, cfg, chosen, cfg.train_moe_impl(mesh))
    steps = step_lib.Steps(static, tx, sched, jax.eval_shape(lambda: state), mesh, cfg.rules)
    state = jax.device_put(state, steps.state_sharding)

    ckpt = checkpointing.Checkpoints(workdir, int(tr.keep_checkpoints), save_trunk=trains_trunk,
                                     async_save=bool(tr.async_checkpoints))
    digest = config_digest(config)
    meta = {"stage_index": int(st.index), "stage_name": st.name, "trainable": list(chosen), "config_digest": digest}
    it = iter(train_ds)
    start = ckpt.latest_step()
    if start is not None:
        old = ckpt.read_meta(start)
        if old.get("config_digest") != digest:
            raise TrainError(f"{ckpt.dir}: its checkpoints were written under another config "
                             f"(digest {old.get('config_digest')} != {digest}); use a new --workdir")
        state, data_state, _ = ckpt.restore(start, state, steps.state_sharding)
        it.set_state(data_state)
        print(f"train: resumed {workdir} at step {start}", file=log)
    start = int(jax.device_get(state.step))

    tb = telemetry.TensorBoard(workdir / "tb")
    history = telemetry.History()
    progress = telemetry.Progress(int(tr.steps), f"stage {st.index} {st.name}", enabled=bool(tr.progress))
    record = {"stage_index": int(st.index), "stage_name": st.name, "start_step": start, "timestamp": time.time(),
              "actions": {"trainable": list(chosen), "bus_mix_prob": float(st.bus_mix),
                          "stream_dropout_prob": float(st.stream_dropout), "note_noise": float(st.note_noise),
                          "forward": st.forward.to_dict(), "init_from": init_source or st.init_from}}
    try:
        return _train(config, cfg, mesh, st, tr, state, steps, ckpt, it, meta, tb, history, progress, record, spec,
                      feat, export, tokenizer, workdir, log, stop_after, stages_file)
    finally:
        ckpt.close()
        tb.close()


def _train(config, cfg, mesh, st, tr, state, steps, ckpt, it, meta, tb, history, progress, record, spec, feat, export,
           tokenizer, workdir, log, stop_after, stages_file):
    start = record["start_step"]
    t_stage = time.perf_counter()
    flops = None
    pending = None   # (step, metrics on device, t dispatched)
    calls = 0
    step = start

    def handle(done_step, m):
        m = jax.device_get(m)
        if not m["finite"]:
            bad = int(m["first_bad"])
            what = losses.TERMS[bad] if 0 <= bad < len(losses.TERMS) else "the gradient"
            print(f"train: step {done_step}: non-finite {what}; update skipped", file=log)
        scalars = {k: v for k, v in m.items() if k not in ("finite", "first_bad")}
        history.add(scalars)
        return m

    last_bad = None
    t_last = time.perf_counter()
    while step < int(tr.steps) and (stop_after is None or calls < stop_after):
        batch = next(it)
        t0 = time.perf_counter()
        state, metrics = steps.train(state, batch)
        calls += 1
        step += 1
        if pending is not None:
            prev_step, prev_m, _ = pending
            got = handle(prev_step, prev_m)
            last_bad = None if got["finite"] else (prev_step, int(got["first_bad"]))
        pending = (step, metrics, t0)
        streak = int(jax.device_get(state.bad_streak)) if (step % int(tr.log_every) == 0 or last_bad) else 0
        if streak >= int(tr.max_nonfinite):
            bad = last_bad[1] if last_bad else -1
            what = losses.TERMS[bad] if 0 <= bad < len(losses.TERMS) else "the gradient"
            raise TrainError(f"{streak} non-finite steps in a row (the last at step {step}; first non-finite: "
                             f"{what}); stopping")
        if step % int(tr.log_every) == 0 or step == int(tr.steps):
            m = jax.device_get(metrics)
            now = time.perf_counter()
            dt = (now - t_last) / max(int(tr.log_every), 1)
            t_last = now
            tokens_s = float(m["tokens"]) / max(dt, 1e-9)
            if flops is None:
                flops = step_flops(steps, state, batch)
            scalars = {k: float(v) for k, v in m.items() if k not in ("finite", "first_bad")}
            scalars.update({"perf/step_time_s": dt, "perf/tokens_per_s": tokens_s, "skipped": float(state.skipped)})
            if flops:
                scalars["perf/flops_per_s"] = flops / dt
                peak = peak_flops(mesh)
                if peak:   # only where the devices' peak is known: no invented denominators
                    scalars["perf/mfu"] = flops / dt / peak
            tb.scalars(step, scalars)
            progress.update(step, float(m["loss"]), tokens_s)
        if step % int(tr.checkpoint_every) == 0 and step < int(tr.steps):
            ckpt.save(step, state, it.get_state(), meta)
        if step % int(tr.eval_every) == 0 and step < int(tr.steps):
            evaluate(steps, state, config, spec, feat, export, tb, step, tokenizer)
    if pending is not None:
        handle(*pending[:2])
    result = {"workdir": str(workdir), "step": step, "finished": step >= int(tr.steps), "params": state.params}
    if step >= int(tr.steps):
        scalars, calibration = evaluate(steps, state, config, spec, feat, export, tb, step, tokenizer)
        if ckpt.latest_step() != step:
            ckpt.save(step, state, it.get_state(), meta, force=True)
        ckpt.wait()
        gamma = calibration["agreement_threshold"] if float(st.losses.readiness) > 0 else None
        export_dir = workdir / "export"
        checkpointing.export_sidecar(export_dir, state.params, cfg, gamma)
        if any(p.startswith("trunk/") for p in steps.static.chosen):
            _export_trunk(export_dir, state.params["trunk"], cfg, tokenizer)
        else:
            _link_trunk(export_dir, _path(config.trunk_checkpoint))
        record.update(end_step=step, steps=step - start, duration=time.perf_counter() - t_stage,
                      completed_at=time.time(), validation=scalars)
        write_telemetry(workdir, stages_file, config, cfg, record, history, calibration, export, step, state)
        result.update(validation=scalars, gamma=gamma, export=str(export_dir))
    return result


def _export_trunk(export_dir: Path, trunk, cfg: pdt.PDTConfig, tokenizer) -> None:
    """A stage that trained the trunk exports it in the converted trunk format (with its
    tokenizer), written to a temporary directory and renamed: ``<export>/trunk`` is then a trunk
    checkpoint for ``trunk_checkpoint`` and ``launch/infer.py --checkpoint``."""
    import shutil

    from pdt_jax.trunk.checkpoint import save_converted

    out = export_dir / "trunk"
    tmp = export_dir / "trunk.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_converted(str(tmp), cfg.trunk, jax.device_get(trunk))
    tokenizer.hf.save(str(tmp / "tokenizer.json"))
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _link_trunk(export_dir: Path, trunk_dir: Path):
    """The export is a PDT checkpoint (trunk/ + sidecar.safetensors) for launch/infer.py; its trunk
    is a link to the converted trunk, which training never writes."""
    link = export_dir / "trunk"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(trunk_dir.absolute(), target_is_directory=True)


def step_flops(steps, state, batch) -> float | None:
    """FLOPs of one train step from XLA's cost analysis of the lowered program (lowered on the
    live state and batch: the trace is the one the step already made)."""
    try:
        lowered = steps.lower_train(state, steps.put_batch(batch))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:   # a backend without cost analysis: no MFU, nothing else changes
        return None


def peak_flops(mesh) -> float | None:
    """Dense bf16 peak of the mesh's devices (H100/H200: 989 TFLOP/s, B200: 2.25 PFLOP/s); None for
    devices whose peak we do not know (CPUs): no MFU is reported then."""
    kind = mesh.devices.flat[0].device_kind.lower()
    per = 989e12 if ("h100" in kind or "h200" in kind) else 2.25e15 if "b200" in kind else None
    return None if per is None else per * mesh.devices.size


def evaluate(steps, state, config, spec, feat, export, tb, step, tokenizer):
    tr = config.train
    ds = data.dataset(export / "validation.parquet", feat("validation"), spec, int(tr.batch_size), 1,
                      seed=0, shuffle=False, repeat=True)
    outs = []
    for i, batch in zip(range(int(tr.eval_batches)), ds):
        outs.append(jax.device_get(steps.evaluate(state.params, batch)))
        if i == 0 and int(tr.text_samples) > 0:
            tb.text(step, "samples/target", tokenizer.decode(batch["tokens"][0, 0, 0][batch["label_mask"][0, 0, 0]]))
    scalars, calibration = telemetry.validation_metrics(outs)
    tb.scalars(step, {f"validation/{k}": v for k, v in scalars.items()})
    tb.flush()
    return scalars, calibration


def write_telemetry(workdir, stages_file, config, cfg, record, history, calibration, export, step, state):
    stages = json.loads(stages_file.read_text()) if stages_file.exists() else []
    stages = [s for s in stages if s.get("stage_index") != record["stage_index"]] + [record]
    telemetry.write_json(stages_file, stages)
    telemetry.write_json(workdir / "agreement_thresholds.json", calibration)
    telemetry.write_json(workdir / "training_report.json", {
        "generated_at": time.time(), "global_step": step, "stage": record["stage_name"],
        "train_metrics": history.summary(), "eval_metrics": record.get("validation", {}),
        "agreement_threshold": calibration["agreement_threshold"], "skipped_steps": int(jax.device_get(state.skipped))})
    telemetry.write_json(workdir / "train_manifest.json", {
        **telemetry.git_info(ROOT), "config": config.to_dict(), "global_step": step,
        "stage_index": record["stage_index"], "stage_name": record["stage_name"],
        "agreement_threshold": calibration["agreement_threshold"],
        "dataset": str(export), "data_fingerprint": TN.data_fingerprint(export),
        "notes_schema_version": R.NOTES_SCHEMA_VERSION, **cfg.sidecar.hashing_metadata(),
        "stages_file": str(stages_file), "agreement_thresholds_file": str(workdir / "agreement_thresholds.json")})


# ---- the curriculum -------------------------------------------------------------------------------

def run(config: ConfigDict, workdir: str | Path, log=sys.stderr) -> list[dict]:
    """A stage config, or a curriculum config (``stages``: stage blocks run in order, each from the
    previous one's final checkpoint, in ``<workdir>/stage<i>_<name>``)."""
    workdir = Path(workdir)
    if "stages" not in config:
        return [run_stage(config, workdir, log)]
    order = sorted(config.stages.keys())
    if set(config.steps_per_stage.keys()) != set(order):
        raise ConfigError(f"steps_per_stage: needs exactly the stages {order}, found {sorted(config.steps_per_stage.keys())}")

    def stage_config(name, init_from):
        c = ConfigDict({k: v for k, v in config.items() if k not in ("stages", "steps_per_stage")})
        c.stage = ConfigDict(config.stages[name].to_dict())
        c.train.steps = int(config.steps_per_stage[name])
        if init_from is not None:
            c.stage.init_from = init_from
        return c
    for i, name in enumerate(order):   # every stage checked before the first compiles
        try:
            check(stage_config(name, "fresh" if i else None))
        except ConfigError as e:
            raise ConfigError(f"stages.{name}: {e}") from None
    results, previous = [], None
    for name in order:
        c = stage_config(name, None if previous is None else str(previous))
        sub = workdir / f"stage{c.stage.index}_{c.stage.name}"
        results.append(run_stage(c, sub, log, stages_file=workdir / "train_run_stages.json"))
        previous = sub
    return results

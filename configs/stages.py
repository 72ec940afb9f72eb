"""The training curriculum (seed README "Training Approach"), one stage per config file:

    configs/stage0.py  planner_pretrain   planner, plan embedding, notes head; streams read the teacher's notes
    configs/stage1.py  stream_bootstrap   + stream adapters, SNC, stream classifier; LM CE and KD switch on
    configs/stage2.py  notes_bus          + speculation head; streams read each other's notes (the bus)
    configs/stage3.py  commit_control     + agreement (readiness) and coverage heads; bus mixing, stream dropout
    configs/stage4.py  trunk_unfreeze     + the whole trunk (memory plan only on the seed's hardware)
    configs/curriculum.py                 stages 0–3 in sequence, each from the previous one's final checkpoint

Variants: default = GPT-OSS-20B trunk on an 8-GPU FSDP mesh at sequence 2048 (``trunk_checkpoint`` and
``data.export_dir`` must be set); ``small`` = the 4-layer benchmark trunk; ``tiny`` = the 2-layer
test trunk, which builds the tiny synthetic dataset and a random trunk under ``runs/`` when they are
absent, so ``python launch/train.py --config=configs/stage2.py:tiny --workdir=runs/try`` runs on a
fresh clone; ``demo`` = the 2-layer trunk of ``make demo`` pretrained on the coordination task
(configs/pretrain_tiny.py) and its dataset. A stage is data: every field below can be overridden (``--config.train.steps=20``,
``--config.stage.losses.kd=0``, ``--config.stage.forward.form=exact``).
"""
from __future__ import annotations

from ml_collections import ConfigDict

from configs.model import pdt as model_configs

# Cumulative trainable sets (regexes, full match over parameter paths).
PLANNER = (r"sidecar/planner/.*", r"sidecar/plan_embed", r"sidecar/plan_to_notes", r"sidecar/notes_head/.*")
STREAMS = (r"sidecar/layers/\d+/adapter/.*", r"sidecar/layers/\d+/adapter_gate", r"sidecar/layers/\d+/snc/.*",
           r"sidecar/layers/\d+/snc_gate", r"sidecar/entry_embed", r"sidecar/stream_cls/.*")
SPECULATION = (r"sidecar/spec_head/.*",)
COMMIT = (r"sidecar/agree/.*", r"sidecar/coverage/.*")
TRUNK = (r"trunk/.*",)

NAMES = ("planner_pretrain", "stream_bootstrap", "notes_bus", "commit_control", "trunk_unfreeze")


def _losses(**on) -> ConfigDict:
    base = dict(planner=0.0, notes=0.0, spec=0.0, lm=0.0, shared=0.0, kd=0.0, coverage=0.0, readiness=0.0, retry=0.0,
                stream=0.0)
    base.update(on)
    return ConfigDict(base)


def stage_block(index: int) -> ConfigDict:
    trainable = PLANNER
    losses = _losses(planner=1.0, notes=1.0)
    form, bus_mix, dropout = "teacher", 0.0, 0.0
    if index >= 1:
        trainable += STREAMS
        losses.update(dict(lm=1.0, kd=1.0, stream=0.1))
    if index >= 2:
        trainable += SPECULATION
        losses.update(dict(spec=0.5))
        form = "passes"
    if index >= 3:
        trainable += COMMIT
        # retry: the readiness head also learns the pairs the runtime asks about after a
        # rollback (the block again, reading round v + 1's window: losses.py).
        losses.update(dict(coverage=1.0, readiness=1.0, retry=1.0))
        bus_mix, dropout = 0.35, 0.15
    if index >= 4:
        trainable += TRUNK
    return ConfigDict(dict(
        index=index, name=NAMES[index], trainable=trainable, losses=losses,
        # teacher: one pass reading the teacher's notes; passes: n whole-sequence passes, pass i reading
        # pass i − 1's notes; exact: block-recurrent, equal to the runtime (pdt_jax/train/forward.py).
        # remat: recompute each trunk layer (exact form: each round) in the backward pass;
        # q_chunk: trunk attention and SNC this many queries at a time (0: all) — memory, same values.
        forward=ConfigDict(dict(form=form, passes=2, remat=False, q_chunk=0)),
        gate=1.0, kd_temperature=1.0, bus_mix=bus_mix, stream_dropout=dropout, note_noise=0.0,
        # Where the parameters start: 'fresh' (a new sidecar), or a directory — a previous stage's
        # workdir (its final checkpoint) or an exported PDT checkpoint (sidecar.safetensors). Stages
        # after the first must say.
        init_from="fresh" if index == 0 else "",
    ))


def get_config(index: int, arg: str | None = None) -> ConfigDict:
    variant = arg or ""
    if variant not in ("", "20b", "small", "tiny", "demo"):
        raise ValueError(f"configs/stage{index}.py: unknown variant {arg!r}; valid: '', 'small', 'tiny', 'demo'")
    c = ConfigDict()
    c.variant = variant or "20b"
    c.model = model_configs.get_config(variant)
    if c.variant == "20b":
        # Training's production mesh is FSDP over the 8 GPUs: every parameter split along the model
        # dimension, the rows (examples × streams) split 8 ways. Inference's expert-parallel mesh
        # would replicate every row's activations and logits on every device.
        c.model.mesh.expert = 1
        c.model.mesh.fsdp = -1
    c.stage = stage_block(index)
    c.trunk_checkpoint = ""          # a converted trunk directory (python -m converters.gpt_oss ...)
    c.tokenizer = ""                 # tokenizer.json; default: the checkpoint's (tiny: the tiny BPE)
    c.build_missing = False          # tiny: build the dataset and a random trunk when absent
    c.data = ConfigDict(dict(
        export_dir="",               # a data_pipeline export (train/validation/test.parquet + metadata.json)
        pipeline_config="",          # the data config that builds export_dir when build_missing
        pipeline_documents=0,        # ... with this many documents (0: the data config's)
        pipeline_fractions=(),       # ... and these train/validation/test fractions (empty: the data config's)
        teacher_notes_cache="runs/teacher_notes",
        buckets=(512, 1024, 2048),   # row lengths a batch is padded to (one compile each)
        kd_context=1024,             # document tokens the KD teacher reads before the target (0: none)
        stream_prefixes=ConfigDict(),  # {stream name: text before the user prompt}, as --stream-prefixes
        system="",
        seed=0,
        max_records=0,               # train on the first N records only (0: all; overfitting checks)
    ))
    c.train = ConfigDict(dict(
        steps=15000, batch_size=8, grad_accum=2, lr=2e-4, warmup_steps=500, min_lr_ratio=0.1,
        weight_decay=0.01, b1=0.9, b2=0.95, clip_norm=1.0, seed=0,
        log_every=25, eval_every=1000, eval_batches=8, checkpoint_every=1000, keep_checkpoints=3,
        max_nonfinite=8, progress=True, async_checkpoints=True, text_samples=1,
    ))
    if variant == "small":
        c.data.buckets = (256, 512)
        c.data.kd_context = 128
        c.train.update(dict(steps=200, batch_size=2, grad_accum=1, log_every=10, eval_every=100, eval_batches=2,
                            checkpoint_every=100, warmup_steps=20))
    if variant == "tiny":
        c.build_missing = True
        c.trunk_checkpoint = "runs/tiny/trunk"
        c.data.export_dir = "runs/tiny/data/export"
        c.data.pipeline_config = "configs/data/synthetic.py:tiny"
        c.data.pipeline_documents = 40
        c.data.pipeline_fractions = (0.7, 0.15, 0.15)
        c.data.buckets = (128, 256, 512)
        c.data.kd_context = 0
        c.train.update(dict(steps=40, batch_size=2, grad_accum=1, lr=3e-3, warmup_steps=4, log_every=5,
                            eval_every=20, eval_batches=2, checkpoint_every=10, keep_checkpoints=2))
    if variant == "demo":
        demo_data(c)
        c.trunk_checkpoint = "runs/demo/pretrain/export/trunk"   # configs/pretrain_tiny.py's export
        c.train.update(dict(steps=150, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=10, log_every=10,
                            eval_every=1000, eval_batches=2, checkpoint_every=50, keep_checkpoints=1))
    c.stage = variant_stage(c.stage, variant)
    return c


def demo_data(c: ConfigDict) -> None:
    """The coordination task's dataset (configs/data/coordination.py), built when absent."""
    c.build_missing = True
    c.build_trunk = False            # the trunk comes from pretraining, never a random one
    c.data.export_dir = "runs/demo/data/export"
    c.data.pipeline_config = "configs/data/coordination.py"
    c.data.pipeline_documents = 600   # as configs/demo.py builds it
    c.data.teacher_notes_cache = "runs/demo/teacher_notes"
    c.data.buckets = (104, 208)
    c.data.kd_context = 0


def variant_stage(stage: ConfigDict, variant: str) -> ConfigDict:
    """A stage block as a variant runs it. Tiny: a random trunk is no teacher — distilling from it
    fights the LM loss (measured on the tiny curriculum: KD rose 5–44% per stage while LM CE fell)
    — so tiny stages train without KD (small and 20B keep it: their trunk is a language model), and
    every tiny stage may start from a fresh sidecar."""
    if variant in ("tiny", "small", "demo") and stage.index >= 2:
        # Streams reading each other's notes train on exactly what inference computes. The passes
        # form drifts after round n·(Δ + 1) − 1: with the tiny curriculum's trained sidecars, two
        # passes disagree with inference by up to 1.7 logits (argmax agreement 46–67% after the
        # horizon); the exact form costs 3.2× (tiny) – 4× (small) its forward + backward on CPU
        # (bench/train_forward.py). At 20B the exact form would decode 2048 tokens one step at a
        # time per row: stages 2–3 run two passes there.
        stage.forward.form = "exact"
    if variant == "tiny":
        stage.losses.kd = 0.0
        if stage.index > 0:
            stage.init_from = "fresh"
    if variant == "demo":
        # The demo's trunk is a language model of the task (pretrained), but KD from it would teach
        # a stream to guess what it cannot see; the curriculum runs without it. Once streams read
        # each other's notes (stage 2), the notes head mostly learns from what the readers need
        # (the LM loss through the bus): the teacher's mean-pooled note vectors hardly carry the
        # one token a sibling must reuse.
        stage.losses.kd = 0.0
        if stage.index >= 2:
            stage.losses.notes = 0.1
        if stage.index >= 1:
            # The founder and year a Trade or Legacy stream restates are 1-4 of its ~50 tokens; in
            # the mean over every token their gradient is swamped by text the bus cannot help with
            # (random details, numbers): trained without this term the streams never learnt to
            # read the bus for them (their CE with the bus ≈ with it hidden). Scored on
            # their own as well: 0.22 / 0.60 with the bus, 3.07 / 1.56 hidden (bench/bus_probe.py,
            # README "Training").
            stage.losses.shared = 1.0
        if stage.index >= 3:
            # At its calibrated γ no block of the demo's PDT rolls back (rollback rate 0 with the
            # bus and both ablations; 0.7% with the gate at 0, the bare trunk), so the question the
            # retry pairs teach is not asked of the trained streams; the term would only
            # reshape stage 3's clipped updates (with it on, measured: redundancy 0.270 with the
            # bus vs 0.252 ablated — README "The demo").
            stage.losses.retry = 0.0
    if variant in ("", "20b"):
        # 2048-token rows through 24 layers: keep each layer's input only and recompute the layer in
        # the backward pass, attention and SNC 512 queries at a time (bench/memory_plan.py).
        stage.forward.remat = True
        stage.forward.q_chunk = 512
    return stage

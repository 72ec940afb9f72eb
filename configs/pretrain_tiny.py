"""Trunk pretraining for ``make demo`` — the one config where the trunk trains.

    python launch/train.py --config=configs/pretrain_tiny.py --workdir=runs/demo/pretrain

The demo's 2-layer GPT-OSS-architecture trunk (configs/model/gpt_oss_20b.py:demo) learns the
coordination task's articles as a plain language model: the same trainer, checkpoints and
telemetry as the curriculum, with ``trunk/.*`` trainable, the sidecar gated off (gate 0, nothing
of it trained) and the ``document`` forward form — the trunk reads each article once (prompt and
every section in order), so every section is learnt in the context of the ones before it, as the
sequential baseline writes them; the LM loss and the ``shared`` term (the tokens a section restates
from an earlier one) score it. Built when absent: the coordination dataset, a random
trunk, and a 512-id byte-level BPE trained on the dataset (the trunk's tokenizer.json). The final
step exports the trained trunk in the converted trunk format to ``<workdir>/export/trunk``, which
the demo stages read (configs/stage<i>.py:demo ``trunk_checkpoint``).
"""
from ml_collections import ConfigDict

from configs import stages


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/pretrain_tiny.py: no variants (found {arg!r})")
    c = stages.get_config(0, "demo")
    c.build_trunk = True
    c.build_tokenizer = True
    c.trunk_checkpoint = "runs/demo/random_trunk"
    c.data.kd_context = 0            # the document form reads whole articles (data.RowSpec.article)
    c.data.buckets = (104, 208, 256)   # sections; the articles pretraining reads fit 208 (seed 0: <= 200)
    c.stage = ConfigDict(dict(
        index=-1, name="trunk_pretrain", trainable=stages.TRUNK,
        losses=ConfigDict(dict(planner=0.0, notes=0.0, spec=0.0, lm=1.0, shared=1.0, kd=0.0, coverage=0.0,
                               readiness=0.0, stream=0.0)),
        forward=ConfigDict(dict(form="document", passes=2, remat=False, q_chunk=0)),
        gate=0.0, kd_temperature=1.0, bus_mix=0.0, stream_dropout=0.0, note_noise=0.0, init_from="fresh"))
    c.train.update(dict(steps=300, batch_size=16, grad_accum=1, lr=3e-3, warmup_steps=20, log_every=20,
                        eval_every=1000, eval_batches=2, checkpoint_every=100, keep_checkpoints=1))
    return c

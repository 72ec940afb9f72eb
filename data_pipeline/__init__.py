"""The PDT dataset pipeline: preflight -> plans -> notes -> collate -> export.

Run ``python -m data_pipeline run --config=configs/data/synthetic.py:tiny``; the manual is
``docs/data_pipeline.md``. The library (``pdt_jax``) never imports this package; the trainer reads
the export stage's records through ``pdt_jax.records``.
"""

"""Dataset pipeline throughput.

  python bench/data_pipeline.py [--docs 300] [--llm-docs 24] [--latency-ms 20] [--json PATH]

1. documents/s of every stage with the procedural teacher (synthetic world, fresh work dir), and
   the statistics of the labels it exports, at the trainer's granularity (blocks of ``--tau`` tokens
   of the tiny BPE, lag ``--lag``: ``pdt_jax.records.block_labels``): readiness positive rate,
   coverage target values, distinct plans and plan items, cross-stream dependencies;
2. requests/s of the openai teacher against the local OpenAI-compatible server (127.0.0.1, the
   procedural teacher behind real HTTP, ``--latency-ms`` of simulated model latency per request) at
   concurrency 1 vs 8, plans + notes stages, no cache. Prints a table with the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.data.openai_teacher import get_config as openai_config  # noqa: E402
from configs.data.synthetic import get_config as synthetic_config  # noqa: E402
from data_pipeline import pipeline, synthetic_world  # noqa: E402
from data_pipeline.teacher_server import TeacherServer  # noqa: E402


def procedural(num_docs: int, root: Path) -> dict[str, float]:
    cfg = synthetic_config()
    cfg.work_dir, cfg.progress = str(root / "procedural"), False
    cfg.source.num_documents = num_docs
    reports = pipeline.run(cfg, log=None)
    return {f"procedural_{s}_docs_per_s": r["counts"]["processed"] / r["wall_s"]
            for s, r in reports.items()}


def label_stats(export_dir: Path, tau: int, lag: int) -> dict[str, float]:
    """The labels a trainer with the tiny BPE and blocks of ``tau`` tokens would see."""
    from pdt_jax import records as R
    from pdt_jax.tokenizer import Tokenizer

    tok = Tokenizer.tiny()
    ready = blocks = unready_docs = deps = mentions = 0
    cov_values = {0.0: 0, 0.5: 0, 1.0: 0}
    own_values = {0.0: 0, 0.5: 0, 1.0: 0}
    plans, items, snapshot_ready, snapshot_total, docs = set(), set(), 0, 0, 0
    for split in R.SPLITS:
        for rec in R.read_records(export_dir / f"{split}.parquet").to_pylist():
            docs += 1
            spans = [tok.encode_with_offsets(t)[1] for t in rec["target_text"]]
            readiness, coverage = R.block_labels(rec, spans, tau, lag)
            flat = [v for row in readiness for v in row]
            ready, blocks = ready + sum(flat), blocks + len(flat)
            unready_docs += 0 in flat
            for k, per_block in enumerate(coverage):
                for targets in per_block:
                    for owner, v in zip(rec["plan_item_stream"], targets):
                        cov_values[v] += 1
                        own_values[v] += owner == k
            plans.add(tuple((s, t) for s, t in zip(rec["plan_item_stream"], rec["plan_item_text"])))
            items.update(rec["plan_item_text"])
            introducer = {}
            for k, ms in enumerate(rec["entity_mentions"]):
                for _, _, e in ms:
                    introducer.setdefault(e, k)
                    mentions += 1
                    deps += introducer[e] != k and e not in rec["planned_entities"]
            snapshot_ready += sum(map(sum, rec["readiness_labels"]))
            snapshot_total += sum(map(len, rec["readiness_labels"]))
    total = sum(cov_values.values())
    return {"labels_documents": docs, "labels_tau": tau, "labels_lag": lag, "labels_blocks": blocks,
            "readiness_positive_rate": ready / max(blocks, 1),
            "readiness_positive_rate_per_snapshot": snapshot_ready / max(snapshot_total, 1),
            "documents_with_unready_blocks": unready_docs,
            "coverage_fraction_missing": cov_values[0.0] / total, "coverage_fraction_partial": cov_values[0.5] / total,
            "coverage_fraction_covered": cov_values[1.0] / total,
            "coverage_owned_fraction_partial": own_values[0.5] / max(sum(own_values.values()), 1),
            "distinct_plans": len(plans), "distinct_plan_items": len(items),
            "entity_mentions": mentions, "cross_stream_dependencies": deps,
            "cross_stream_dependencies_per_document": deps / max(docs, 1)}


def llm(num_docs: int, concurrency: int, latency_s: float, root: Path) -> dict[str, float]:
    docs, _ = synthetic_world.build_world(num_docs, 0)
    with TeacherServer(docs, latency_s=latency_s) as srv:
        cfg = openai_config()
        cfg.work_dir, cfg.progress = str(root / f"llm_c{concurrency}"), False
        cfg.source.num_documents = num_docs
        cfg.teacher.concurrency = concurrency
        cfg.teacher.openai.concurrency = concurrency
        cfg.teacher.openai.base_url = srv.base_url
        cfg.teacher.openai.dotenv_path = None
        cfg.teacher.openai.cache_dir = str(root / f"llm_c{concurrency}" / "cache")
        pipeline.run(cfg, ["preflight"], log=None)
        t0 = time.perf_counter()
        pipeline.run(cfg, ["plans", "notes"], log=None)
        wall = time.perf_counter() - t0
        return {"requests": len(srv.log), "wall_s": wall, "requests_per_s": len(srv.log) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--llm-docs", type=int, default=24)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--tau", type=int, default=4, help="tokens per block for the label statistics")
    ap.add_argument("--lag", type=int, default=1, help="lag for the label statistics")
    ap.add_argument("--json", type=str, default=None, help="write the figures as one flat object")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-local-bench")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures = procedural(args.docs, root)
        figures.update(label_stats(root / "procedural" / "export", args.tau, args.lag))
        c1 = llm(args.llm_docs, 1, args.latency_ms / 1000, root)
        c8 = llm(args.llm_docs, 8, args.latency_ms / 1000, root)
    figures.update({
        "procedural_documents": args.docs, "llm_documents": args.llm_docs,
        "llm_latency_ms": args.latency_ms, "llm_requests": c1["requests"],
        "llm_c1_requests_per_s": c1["requests_per_s"], "llm_c8_requests_per_s": c8["requests_per_s"],
        "llm_c8_over_c1": c8["requests_per_s"] / c1["requests_per_s"],
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    })
    print(f"procedural teacher, {args.docs} synthetic documents ({os.cpu_count()} CPU cores)")
    print(f"{'stage':<12}{'documents/s':>14}")
    for stage in pipeline.STAGES:
        print(f"{stage:<12}{figures[f'procedural_{stage}_docs_per_s']:>14.1f}")
    f = figures
    print(f"\nlabels, blocks of {args.tau} tiny-BPE tokens, lag {args.lag}, {f['labels_documents']} documents: "
          f"readiness positives {100 * f['readiness_positive_rate']:.1f}% of {f['labels_blocks']} blocks "
          f"(per snapshot: {100 * f['readiness_positive_rate_per_snapshot']:.1f}%); coverage targets "
          f"missing/partial/covered {100 * f['coverage_fraction_missing']:.1f}/{100 * f['coverage_fraction_partial']:.1f}/"
          f"{100 * f['coverage_fraction_covered']:.1f}%; {f['distinct_plans']} distinct plans, "
          f"{f['distinct_plan_items']} distinct plan items; {f['cross_stream_dependencies']} cross-stream "
          f"dependencies ({f['cross_stream_dependencies_per_document']:.1f} per document)")
    print(f"\nopenai teacher vs local server, {args.llm_docs} documents = {c1['requests']} requests, "
          f"{args.latency_ms:g} ms simulated latency")
    print(f"{'concurrency':<12}{'requests/s':>14}{'wall s':>10}")
    print(f"{1:<12}{c1['requests_per_s']:>14.1f}{c1['wall_s']:>10.2f}")
    print(f"{8:<12}{c8['requests_per_s']:>14.1f}{c8['wall_s']:>10.2f}")
    print(f"ratio 8 / 1: {figures['llm_c8_over_c1']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                               for k, v in figures.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Dataset pipeline throughput.

  python bench/data_pipeline.py [--docs 300] [--llm-docs 24] [--latency-ms 20] [--json PATH]

1. documents/s of every stage with the procedural teacher (synthetic world, fresh work dir);
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
    ap.add_argument("--json", type=str, default=None, help="write the figures as one flat object")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-local-bench")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures = procedural(args.docs, root)
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

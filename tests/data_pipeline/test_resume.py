"""Kill-and-resume: a run SIGKILLed mid-stage and re-run equals an uninterrupted run, byte for byte."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from data_pipeline import pipeline
from tests.data_pipeline.conftest import API_KEY, openai_teacher_config, output_files, world

REPO = Path(__file__).resolve().parents[2]


def _cli(work: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline", "run",
            "--config=configs/data/openai_teacher.py:tiny",
            f"--config.work_dir={work}", f"--config.teacher.openai.base_url={base_url}",
            f"--config.teacher.openai.cache_dir={work}/teacher_cache",
            "--config.teacher.openai.dotenv_path=", "--config.progress=False",
            "--config.source.num_documents=6", "--config.teacher.concurrency=1"]


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path, api_key, make_server):
    docs = world(6)
    reference = tmp_path / "reference"
    srv_ref = make_server(docs)
    pipeline.run(openai_teacher_config(reference, srv_ref.base_url, 6), log=None)

    srv = make_server(docs, latency_s=0.05)  # slow enough to land the kill inside the notes stage
    work = tmp_path / "killed"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_cli(work, srv.base_url), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    notes_docs = work / "notes" / "docs"
    while time.monotonic() < deadline and proc.poll() is None:
        if notes_docs.is_dir() and len(list(notes_docs.glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(notes_docs.glob("*.json")))
    assert 2 <= done_before < 6 and not (work / "export").exists()

    requests_before = len(srv.log)
    resumed = subprocess.run(_cli(work, srv.base_url), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # finished documents were not asked again (artefacts + cache)
    assert len(srv.log) - requests_before <= 3 * (6 - done_before) + 3
    assert output_files(work) == output_files(reference)
    assert not list(work.rglob(".*.tmp"))


def test_an_edited_document_reruns_exactly_what_depends_on_it(tmp_path):
    """Editing one document's text (same doc_id) and re-running redoes that document's plan and
    notes and the whole-dataset files built from them; every other document's artefacts stay
    byte for byte, and the export carries the new text."""
    import json

    from tests.data_pipeline.conftest import procedural_config
    from pdt_jax import records as R

    docs = world(5)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = procedural_config(tmp_path / "work", 5)
    cfg.source.kind, cfg.source.paths = "files", str(src)
    pipeline.run(cfg, log=None)
    before = output_files(tmp_path / "work")
    edited = json.loads(json.dumps(docs[2]))
    edited["sections"][-1]["text"] += " A new closing sentence about Velmora's harbour."
    docs[2] = edited
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    pipeline.run(cfg, log=None)
    after = output_files(tmp_path / "work")
    changed = {k for k in before if before[k] != after.get(k)}
    sid = docs[2]["doc_id"]
    per_doc = {k for k in changed if "/docs/" in k}
    assert per_doc == {f"plans/docs/{sid}.json", f"notes/docs/{sid}.json"}
    assert changed - per_doc <= {"preflight/accepted.jsonl", "collate/train.parquet", "collate/validation.parquet",
                                 "collate/test.parquet", "export/train.parquet", "export/validation.parquet",
                                 "export/test.parquet"}
    rows = {r["sample_id"]: r for s in R.SPLITS
            for r in R.read_records(tmp_path / "work" / "export" / f"{s}.parquet").to_pylist()}
    assert "A new closing sentence about Velmora's harbour." in rows[sid]["document_text"]

"""Runs one function per document with bounded concurrency, one atomic artefact per document.

Resume rule: a document is done when its artefact (or a final rejection) exists *and* carries the
current fingerprint; everything else is (re)done. Consolidated lists are rebuilt from the per-document
files in sample order at the end, so their bytes never depend on completion order or interruptions.
"""
from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from data_pipeline.storage import clean_stale_temps, iter_jsonl, read_json, write_json, write_jsonl
from data_pipeline.storage import fingerprint as _fingerprint
from data_pipeline.teachers.base import TeacherError


class Rejected(Exception):
    """A document this stage refuses, with a reason; ``retryable`` ones are retried on re-run."""

    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def run_documents(stage_dir: Path, items: list[tuple[str, Any]],
                  work: Callable[[str, Any], dict], fingerprint: str, concurrency: int,
                  desc: str, progress: bool, redact: Callable[[str], str] = lambda s: s,
                  inputs: Callable[[str, Any], Any] = lambda sid, payload: payload) -> dict[str, Any]:
    """Applies ``work(sample_id, payload) -> artefact`` to every item not done yet.

    A document's artefact carries the stage ``fingerprint`` (config, teacher) combined with a
    fingerprint of everything ``work`` reads for it (``inputs(sid, payload)``: by default the payload,
    i.e. the document itself), so an edited document — or an upstream artefact that changed — is
    redone, and nothing else. Writes ``docs/<id>.json`` or ``rejected/<id>.json``, then
    ``accepted.jsonl`` (sample ids in input order) and ``rejected.jsonl``. Returns counts.
    """
    docs_dir, rej_dir = stage_dir / "docs", stage_dir / "rejected"
    clean_stale_temps(stage_dir)
    todo, skipped, fps = [], 0, {}
    for sid, payload in items:
        fps[sid] = fp = _fingerprint({"stage": fingerprint, "inputs": inputs(sid, payload)})
        out, rej = docs_dir / f"{sid}.json", rej_dir / f"{sid}.json"
        if out.exists() and read_json(out).get("fingerprint") == fp:
            skipped += 1
        elif rej.exists() and (r := read_json(rej)).get("fingerprint") == fp \
                and not r["retryable"]:
            skipped += 1
        else:
            todo.append((sid, payload))

    def one(sid: str, payload: Any) -> None:
        fingerprint = fps[sid]
        try:
            artefact = work(sid, payload)
        except (Rejected, TeacherError) as e:
            write_json(rej_dir / f"{sid}.json", {
                "sample_id": sid, "reason": redact(e.reason), "retryable": e.retryable,
                "fingerprint": fingerprint})
            (docs_dir / f"{sid}.json").unlink(missing_ok=True)
            return
        artefact["fingerprint"] = fingerprint
        write_json(docs_dir / f"{sid}.json", artefact)
        (rej_dir / f"{sid}.json").unlink(missing_ok=True)

    bar = tqdm(total=len(items), initial=skipped, desc=desc, disable=not progress, unit="doc")
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(one, sid, payload) for sid, payload in todo]
            for fut in cf.as_completed(futures):
                fut.result()  # a bug (not a rejection) must stop the run loudly
                bar.update(1)
    finally:
        bar.close()

    accepted, rejected = [], []
    for sid, _ in items:
        if (docs_dir / f"{sid}.json").exists():
            accepted.append({"sample_id": sid})
        elif (rej_dir / f"{sid}.json").exists():
            r = read_json(rej_dir / f"{sid}.json")
            rejected.append({"sample_id": sid, "reason": r["reason"], "retryable": r["retryable"]})
    write_jsonl(stage_dir / "accepted.jsonl", accepted)
    write_jsonl(stage_dir / "rejected.jsonl", rejected)
    return {"input": len(items), "processed": len(todo), "skipped_done": skipped,
            "accepted": len(accepted), "rejected": len(rejected),
            "rejected_retryable": sum(r["retryable"] for r in rejected)}


def load_artefact(stage_dir: Path, sample_id: str) -> dict:
    return read_json(stage_dir / "docs" / f"{sample_id}.json")


def accepted_ids(stage_dir: Path) -> list[str]:
    path = stage_dir / "accepted.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage {stage_dir.name!r} first")
    return [row["sample_id"] for _, row in iter_jsonl(path)]

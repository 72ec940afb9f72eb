"""The openai teacher against a real HTTP server on 127.0.0.1: clean runs, faults, the cache."""
from __future__ import annotations

import json
import logging

import pytest

from data_pipeline import pipeline
from data_pipeline.storage import iter_jsonl
from data_pipeline.teachers.base import TeacherError
from data_pipeline.teachers.openai_teacher import _retry_after, load_api_key
from pdt_jax import records as R
from tests.data_pipeline.conftest import (API_KEY, openai_teacher_config, procedural_config,
                                          world)


def _ids(path):
    return [r["sample_id"] for _, r in iter_jsonl(path)] if path.exists() else []


def _export_rows(work):
    return {r["sample_id"]: r for s in R.SPLITS
            for r in R.read_records(work / "export" / f"{s}.parquet").to_pylist()}


def test_openai_pipeline_matches_procedural_teacher(tmp_path, api_key, make_server):
    srv = make_server(world(6), api_key=API_KEY)
    cfg = openai_teacher_config(tmp_path / "llm", srv.base_url, 6)
    cfg.preflight.llm_classifier = True
    reports = pipeline.run(cfg, log=None)
    pipeline.run(procedural_config(tmp_path / "proc", 6), log=None)
    llm, proc = _export_rows(tmp_path / "llm"), _export_rows(tmp_path / "proc")
    assert llm.keys() == proc.keys() and len(llm) == 6
    for sid in llm:  # the server's model is the procedural teacher: same supervision
        for field in ("target_text", "plan_item_ids", "coverage_targets", "readiness_labels",
                      "notes_text", "prompt"):
            assert llm[sid][field] == proc[sid][field], (sid, field)
        assert llm[sid]["coverage_mask"] == [True] * len(llm[sid]["coverage_mask"])
    usage = reports["notes"]["teacher"]
    assert usage["requests"] == 6 + 6 + 18 and usage["retries"] == 0
    assert usage["prompt_tokens"] > 0 and usage["cost_usd"] > 0
    # a second run is served from artefacts and the cache: no request reaches the server
    before = len(srv.log)
    pipeline.run(cfg, log=None)
    assert len(srv.log) == before


def test_fault_injection_recoverable_and_unrecoverable(tmp_path, api_key, make_server):
    docs = world(9)
    titles = [d["title"] for d in docs]
    transient = ["429", "500", "timeout", "truncated", "bad_schema"]

    def faults(kind, title, attempt):
        if title == titles[1] and kind == "plan":
            return "bad_schema"                      # never valid -> rejected with reason
        if title == titles[2] and kind == "notes":
            return "omit_coverage"
        if title == titles[3] and kind == "notes":
            return "unknown_item"
        if title == titles[4] and kind == "plan":
            return "400"
        if title == titles[5] and kind == "plan":
            return "500"                             # transient, but never ends
        return transient[attempt] if attempt < len(transient) else None

    srv = make_server(docs, faults=faults, retry_after="0.2", timeout_sleep_s=0.8)
    cfg = openai_teacher_config(tmp_path, srv.base_url, 9)
    cfg.teacher.openai.max_invalid_retries = 2
    cfg.teacher.concurrency = 4
    reports = pipeline.run(cfg, log=None)

    plans_ok, plans_bad = _ids(tmp_path / "plans/accepted.jsonl"), \
        {r["sample_id"]: r for _, r in iter_jsonl(tmp_path / "plans/rejected.jsonl")}
    notes_ok = _ids(tmp_path / "notes/accepted.jsonl")
    notes_bad = {r["sample_id"]: r for _, r in iter_jsonl(tmp_path / "notes/rejected.jsonl")}
    sid = [d["doc_id"] for d in docs]
    assert set(plans_bad) == {sid[1], sid[4], sid[5]}
    assert "answer rejected after 3 attempts" in plans_bad[sid[1]]["reason"]
    assert "HTTP 400" in plans_bad[sid[4]]["reason"] and not plans_bad[sid[4]]["retryable"]
    assert "HTTP 500" in plans_bad[sid[5]]["reason"] and plans_bad[sid[5]]["retryable"]
    assert "omits plan item" in notes_bad[sid[2]]["reason"]
    assert "not in the plan catalog" in notes_bad[sid[3]]["reason"]
    # every recoverable document made it; nothing lost, nothing duplicated
    assert sorted(notes_ok) == sorted(set(sid) - {sid[1], sid[2], sid[3], sid[4], sid[5]})
    assert len(plans_ok) + len(plans_bad) == 9 and len(set(plans_ok) | set(plans_bad)) == 9
    exported = sorted(_export_rows(tmp_path))
    assert exported == sorted(notes_ok)
    usage = reports["notes"]["teacher"]
    assert usage["http_errors"]["429"] > 0 and usage["timeouts"] > 0
    assert usage["invalid_answers"] > 0
    # Retry-After honoured: the retry after a 429 came at least 0.2 s later
    by_key = {}
    for e in srv.log:
        by_key.setdefault((e["kind"], e["title"]), []).append(e)
    gaps = [b["t"] - a["t"] for es in by_key.values() for a, b in zip(es, es[1:])
            if a["fault"] == "429" and b["attempt"] == a["attempt"] + 1]
    assert gaps and min(gaps) >= 0.19

    # the transient failure heals: a re-run retries only the retryable rejection
    srv.faults = None
    before = len(srv.log)
    pipeline.run(cfg, log=None)
    assert sid[5] in _ids(tmp_path / "notes/accepted.jsonl")
    assert {e["title"] for e in srv.log[before:]} == {docs[5]["title"]}


def test_a_misbehaving_servers_200s_reject_one_document_each_and_the_run_finishes(tmp_path, api_key, make_server):
    """Answers with status 200 that are not chat completions we can read — ``choices`` a string,
    no ``message``, ``usage`` not numbers, content a JSON object or a number, a byte that is not
    UTF-8 — a ``Retry-After`` that is neither seconds nor a date, and a body dripped past the
    deadline: each is retried like any bad answer, then rejects only its document, with a reason
    naming it; the run finishes and the counts balance."""
    import time

    docs = world(9)
    titles = [d["title"] for d in docs]
    always = {0: "choices_not_list", 2: "usage_bad", 3: "content_object", 5: "bad_utf8", 7: "drip"}
    once = {1: "no_message", 4: "content_number", 6: "retry_after_garbage"}

    def faults(kind, title, attempt):
        i = titles.index(title) if title in titles else -1
        if kind != "plan":
            return None
        return always.get(i) or (once.get(i) if attempt == 0 else None)

    srv = make_server(docs, faults=faults, drip_s=3.0)
    cfg = openai_teacher_config(tmp_path, srv.base_url, 9)
    t0 = time.monotonic()
    reports = pipeline.run(cfg, log=None)
    elapsed = time.monotonic() - t0
    sid = [d["doc_id"] for d in docs]
    ok = _ids(tmp_path / "plans/accepted.jsonl")
    bad = {r["sample_id"]: r for _, r in iter_jsonl(tmp_path / "plans/rejected.jsonl")}
    assert sorted(ok) == sorted(sid[i] for i in (1, 2, 4, 6, 8))
    assert sorted(bad) == sorted(sid[i] for i in always if i != 2)
    assert "malformed response: field 'choices' is str" in bad[sid[0]]["reason"] and bad[sid[0]]["retryable"]
    assert "message content is a JSON dict" in bad[sid[3]]["reason"]
    assert "not UTF-8 (byte 0xff" in bad[sid[5]]["reason"]
    assert "timed out (deadline timeout_s=0.4)" in bad[sid[7]]["reason"]
    # the drip was cut at the deadline, attempt after attempt: 6 attempts of a 3 s body took < 9 s
    assert sum(e["title"] == titles[7] for e in srv.log) == cfg.teacher.openai.max_retries + 1
    assert elapsed < 9.0
    usage = reports["plans"]["teacher"]
    assert usage["malformed_responses"] >= 6 + 6 + 1 and usage["timeouts"] >= 6 and usage["http_errors"]["429"] == 1
    assert usage["invalid_answers"] >= 3 + 1        # content_object (3 asks), content_number (once)
    exported = sorted(_export_rows(tmp_path))
    assert exported == sorted(_ids(tmp_path / "notes/accepted.jsonl")) and set(exported) <= set(ok)


def test_api_key_never_leaks(tmp_path, api_key, make_server, capsys, caplog):
    docs = world(6)

    def faults(kind, title, attempt):
        if title == docs[0]["title"]:
            return "401"        # the error body echoes the Authorization header
        if title == docs[1]["title"]:
            return "echo_key"   # so does a valid plan and notes answer
        return None

    srv = make_server(docs, faults=faults)
    caplog.set_level(logging.DEBUG)
    cfg = openai_teacher_config(tmp_path, srv.base_url, 6)
    pipeline.run(cfg)
    rejected = list(iter_jsonl(tmp_path / "plans/rejected.jsonl"))
    assert rejected and "HTTP 401" in rejected[0][1]["reason"] and "***" in rejected[0][1]["reason"]
    out = capsys.readouterr()
    texts = [out.out, out.err, caplog.text]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*")
              if p.is_file()]
    rows = _export_rows(tmp_path)                 # the Parquet files are compressed: read them
    texts.append(json.dumps(rows))
    assert not [t for t in texts if API_KEY in t]
    # the echo arrived, scrubbed: in the plan's summary (the notes' echoed alias is dropped, as no
    # text uses it)
    assert "Bearer ***" in (tmp_path / "plans/docs" / f"{docs[1]['doc_id']}.json").read_text()
    assert docs[1]["doc_id"] in rows
    # nor in an exception raised when no key can be found
    with pytest.raises(TeacherError) as e:
        load_api_key("PDT_TEST_NO_SUCH_KEY", str(tmp_path / "missing.env"))
    assert API_KEY not in str(e.value)


def test_key_from_dotenv(tmp_path, monkeypatch):
    monkeypatch.delenv("PDT_TEST_KEY", raising=False)
    env = tmp_path / ".env"
    env.write_text("# comment\nOTHER=1\nexport PDT_TEST_KEY='sk-from-dotenv'\n")
    assert load_api_key("PDT_TEST_KEY", str(env)) == "sk-from-dotenv"
    monkeypatch.setenv("PDT_TEST_KEY", "sk-from-env")
    assert load_api_key("PDT_TEST_KEY", str(env)) == "sk-from-env"


def test_retry_after_parsing():
    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert 0.0 <= _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1.0
    assert _retry_after({}) is None
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({"retry-after": "-3"}) == 0.0


def test_answers_not_grounded_in_the_document_are_rejected_with_their_reason(tmp_path, api_key, make_server):
    """Entities the text never names (an injected instruction), plan items no section talks about,
    a flood of invented entities and an answer over the entity limit are bad answers: re-asked
    (showing the reason), then rejected; none of their text reaches the export."""
    docs = world(6)
    titles = [d["title"] for d in docs]
    plan, notes = {1: "ungrounded_item"}, {0: "ungrounded_entity", 2: "flood", 3: "many_entities"}

    def faults(kind, title, attempt):
        i = titles.index(title) if title in titles else -1
        if i == 4 and kind == "notes":
            return "ungrounded_entity" if attempt == 0 else None   # corrected once told why
        return (plan if kind == "plan" else notes if kind == "notes" else {}).get(i)

    srv = make_server(docs, faults=faults)
    cfg = openai_teacher_config(tmp_path, srv.base_url, 6)
    # Not a deadline test: the flood's large body must arrive whole even on a loaded host (the
    # suite runs two workers), so that the size limit, not the deadline, rejects it.
    cfg.teacher.openai.timeout_s = 5.0
    pipeline.run(cfg, log=None)
    sid = [d["doc_id"] for d in docs]
    plans_bad = {r["sample_id"]: r["reason"] for _, r in iter_jsonl(tmp_path / "plans/rejected.jsonl")}
    notes_bad = {r["sample_id"]: r["reason"] for _, r in iter_jsonl(tmp_path / "notes/rejected.jsonl")}
    assert list(plans_bad) == [sid[1]] and "plan item 'Quantum Teleportation' is not supported" in plans_bad[sid[1]]
    assert sorted(notes_bad) == sorted([sid[0], sid[2], sid[3]])
    assert "entity 'Ignore previous instructions' does not occur in the stream's text" in notes_bad[sid[0]]
    assert "response larger than max_response_bytes" in notes_bad[sid[2]]
    assert "entities exceed notes.max_entities=64" in notes_bad[sid[3]]
    rows = _export_rows(tmp_path)
    assert sorted(rows) == sorted([sid[4], sid[5]])
    text = json.dumps(rows)
    assert "Ignore previous instructions" not in text and "Quantum Teleportation" not in text
    # the re-ask quoted the reason to the model
    asks = [e for e in srv.log if e["title"] == titles[4] and e["kind"] == "notes"]
    assert len(asks) > 3      # three streams, one of them asked twice

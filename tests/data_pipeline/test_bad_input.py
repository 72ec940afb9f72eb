"""Bad input is named precisely; QC rejects plans and notes that break the catalog contract."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import pipeline, qc
from data_pipeline.storage import InputError, iter_jsonl
from tests.data_pipeline.conftest import procedural_config, world

REPO = Path(__file__).resolve().parents[2]


def _files_config(tmp_path, paths):
    cfg = procedural_config(tmp_path / "work")
    cfg.source.kind = "files"
    cfg.source.paths = ",".join(str(p) for p in paths)
    cfg.preflight.min_chars = 50
    return cfg


def test_malformed_jsonl_names_file_and_line(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps(d) for d in world(3)]
    lines.insert(2, '{"doc_id": "x", "title": ')  # line 3
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"{src}:3: malformed JSON line"):
        pipeline.run(_files_config(tmp_path, [src]), log=None)
    # the CLI reports the same, with no traceback
    cli = subprocess.run([sys.executable, "-m", "data_pipeline", "run",
                          "--config=configs/data/files.py:tiny", f"--config.source.paths={src}",
                          f"--config.work_dir={tmp_path / 'cli'}", "--config.progress=False"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and f"{src}:3: malformed JSON line" in cli.stderr


def test_schema_violation_names_file_and_line(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps(world(1)[0]) + "\n" + json.dumps({"doc_id": "y", "title": "T"}) +
                   "\n")
    with pytest.raises(InputError, match=rf"{src}:2: document: <root>: 'sections'"):
        pipeline.run(_files_config(tmp_path, [src]), log=None)


def test_parquet_source_and_preflight_filters(tmp_path):
    docs = world(6)
    short = {"doc_id": "short", "title": "Tiny", "sections": [{"heading": "a", "text": "x"}] * 3}
    dup = {**docs[0], "doc_id": "copy-of-0"}
    cyr = {"doc_id": "cyr", "title": "Ж", "sections": [{"heading": "h", "text": "Жизнь " * 40}] * 3}
    nul = {"doc_id": "nul", "title": "N", "sections": [{"heading": "h", "text": "ab\x00" * 40}] * 3}
    two = {"doc_id": "two", "title": "Two", "sections": docs[1]["sections"][:2]}
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(docs + [short, dup, cyr, nul, two]), path)
    pipeline.run(_files_config(tmp_path, [path]), ["preflight"], log=None)
    rejected = {r["sample_id"]: r for _, r in iter_jsonl(tmp_path / "work/preflight/rejected.jsonl")}
    assert {k: v["category"] for k, v in rejected.items()} == {
        "short": "length", "copy-of-0": "duplicate_content", "cyr": "characters",
        "nul": "characters", "two": "structure"}
    assert "NUL" in rejected["nul"]["reason"]


def _catalog():
    return [{"text": "history", "stream_id": "stream_1"}, {"text": "economy", "stream_id": "stream_1"},
            {"text": "culture", "stream_id": "stream_2"}]


def test_coverage_that_omits_a_plan_item_is_rejected():
    with pytest.raises(ValueError, match="coverage omits plan item 'economy'"):
        qc.check_coverage(_catalog(), "stream_1", [{"plan_item_id": "history",
                                                    "status": "covered"}])


def test_coverage_naming_a_missing_catalog_entry_is_rejected():
    cov = [{"plan_item_id": t, "status": "covered"} for t in ("history", "economy", "geology")]
    with pytest.raises(ValueError, match="'geology', which is not in the plan catalog"):
        qc.check_coverage(_catalog(), "stream_1", cov)
    with pytest.raises(ValueError, match="owned by another stream"):
        qc.check_coverage(_catalog(), "stream_2", [{"plan_item_id": "history", "status": "covered"},
                                                   {"plan_item_id": "culture", "status": "covered"}])
    qc.check_coverage(_catalog(), "stream_2", [{"plan_item_id": "culture", "status": "partial"}])


def _answer(ranges, items=(("overview",), ("history",), ("economy",)), summary="A part."):
    return {"streams": [{"header": "H", "summary": summary, "entities": [], "plan_items": list(it),
                         "notes_contract": ["ENT x", "FACT y"], "section_start": a,
                         "section_end": b} for (a, b), it in zip(ranges, items)]}


def test_plan_checks():
    qc.check_plan_answer(_answer([(0, 1), (1, 3), (3, 5)]), 5, 16, "fail")
    with pytest.raises(ValueError, match="contiguous"):
        qc.check_plan_answer(_answer([(0, 2), (1, 3), (3, 5)]), 5, 16, "fail")
    with pytest.raises(ValueError, match="end at 4"):
        qc.check_plan_answer(_answer([(0, 1), (1, 3), (3, 4)]), 5, 16, "fail")
    with pytest.raises(ValueError, match="appears twice"):
        qc.check_plan_answer(_answer([(0, 1), (1, 3), (3, 5)], (("Early life",), ("early  LIFE!",),
                                                                 ("x",))), 5, 16, "fail")
    with pytest.raises(ValueError, match="exceed the 2 planner slots"):
        qc.check_plan_answer(_answer([(0, 1), (1, 3), (3, 5)]), 5, 2, "fail")
    lint = _answer([(0, 1), (1, 3), (3, 5)], summary="Builds on stream 1 results.")
    with pytest.raises(ValueError, match="Blind Start"):
        qc.check_plan_answer(lint, 5, 16, "fail")
    qc.check_plan_answer(lint, 5, 16, "warn")


@pytest.mark.parametrize("field,value,message", [
    ("notes.num_block", 3, "unknown field 'notes.num_block'; valid fields there: ['drop_fact', 'lag', 'max_entities'"),
    ("notes.num_blocks", 0, "field 'notes.num_blocks': expected an integer >= 1, found 0"),
    ("num_streams", 0, "field 'num_streams': expected an integer >= 1, found 0"),
    ("notes.lag", -1, "field 'notes.lag': expected an integer >= 0, found -1"),
    ("collate.fractions", (0.8, 0.3, 0.1), "field 'collate.fractions': expected 3 non-negative numbers"),
    ("teacher.kind", "gpt", "field 'teacher.kind': expected 'procedural' or 'openai'"),
])
def test_config_mistakes_fail_before_any_stage_runs(tmp_path, field, value, message):
    from data_pipeline.config_check import DataConfigError

    cfg = procedural_config(tmp_path / "work")
    group, _, name = field.rpartition(".")
    (cfg[group] if group else cfg)[name] = value   # a config file may add (misspell) a field
    with pytest.raises(DataConfigError) as e:
        pipeline.run(cfg, log=None)
    assert message in str(e.value)
    assert not (tmp_path / "work").exists()       # nothing ran, nothing was asked of a teacher


def test_an_override_naming_no_field_and_an_empty_source_fail_with_one_line(tmp_path):
    cli = subprocess.run([sys.executable, "-m", "data_pipeline", "run", "--config=configs/data/synthetic.py:tiny",
                          f"--config.work_dir={tmp_path / 'w'}", "--config.notes.num_block=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "unknown dataset config field 'num_block'" in cli.stderr
    assert "Traceback" not in cli.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no documents"):
        pipeline.run(_files_config(tmp_path, [empty]), log=None)


def test_the_synthetic_world_follows_its_config(tmp_path):
    """Asking the same work dir for another world (more documents, another seed) rebuilds it; a
    world whose ground-truth facts a kill lost is rebuilt too."""
    cfg = procedural_config(tmp_path, 4)
    pipeline.run(cfg, ["preflight"], log=None)
    docs = lambda: [r["doc_id"] for _, r in iter_jsonl(tmp_path / "source/documents.jsonl")]
    first = docs()
    cfg.source.num_documents = 6
    pipeline.run(cfg, ["preflight"], log=None)
    assert len(docs()) == 6 and docs()[:4] == first
    seed0 = (tmp_path / "source/documents.jsonl").read_bytes()
    cfg.source.seed = 7
    pipeline.run(cfg, ["preflight"], log=None)
    assert len(docs()) == 6 and (tmp_path / "source/documents.jsonl").read_bytes() != seed0
    (tmp_path / "source/facts.jsonl").unlink()
    pipeline.run(cfg, ["preflight"], log=None)
    assert (tmp_path / "source/facts.jsonl").exists()


def test_a_source_that_is_not_utf8_names_file_line_and_column(tmp_path):
    src = tmp_path / "docs.jsonl"
    good = json.dumps(world(1)[0]).encode()
    src.write_bytes(good + b"\n" + b'{"doc_id": "x", "title": "\xff"}\n')
    with pytest.raises(InputError, match=rf"{src}:2: not UTF-8 \(byte 0xff at column 27\)"):
        pipeline.run(_files_config(tmp_path, [src]), log=None)
    src.write_text(json.dumps(world(1)[0]) + '\n{"doc_id": "x", "title": \n')
    with pytest.raises(InputError, match=rf"{src}:2: malformed JSON line: Expecting value \(column 26\)"):
        pipeline.run(_files_config(tmp_path, [src]), log=None)


def test_artefacts_get_ordinary_file_modes_and_no_temp_file_survives(tmp_path):
    import os
    import stat

    cfg = procedural_config(tmp_path, 4)
    pipeline.run(cfg, log=None)
    (tmp_path / "export" / ".train.parquet.abc.tmp").write_bytes(b"half a file")   # as a kill leaves it
    pipeline.run(cfg, log=None)
    assert not list(tmp_path.rglob(".*.tmp"))
    mask = os.umask(0)
    os.umask(mask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~mask}


def test_facts_and_aliases_must_be_supported_by_the_text():
    """A fact survives only with a quote from the text that supports its object (a number or a
    content word of it); an alias survives only if the text uses it."""
    from data_pipeline.notes import stream_notes

    text = "Vaipound lies on the Kurgulm river. Vaipound was founded in 1460."
    answer = {"entities": [{"id": "e1", "name": "Vaipound", "type": "city", "aliases": ["Vaipound city", "the city"]}],
              "facts": [{"subj_id": "e1", "predicate": "founded", "object": "year 1460", "certainty": 1.0,
                         "evidence": "Vaipound was founded in 1460."},
                        {"subj_id": "e1", "predicate": "river", "object": "the Moon", "certainty": 1.0,
                         "evidence": "Vaipound lies on the Kurgulm river."},
                        {"subj_id": "e1", "predicate": "river", "object": "Kurgulm", "certainty": 1.0,
                         "evidence": "Vaipound lies on the Kurgulm river, near the sea."}],
              "coverage": []}
    notes, dropped = stream_notes("stream_1", answer, text, [])
    assert [f["object"] for f in notes["FACT"]] == ["year 1460"] and dropped == 2
    assert notes["ENT"][0]["aliases"] == []
    assert qc.supported("Overview", "Overview\nVaipound is a city") and not qc.supported("Quantum Teleportation", text)


def test_a_missing_source_path_is_named(tmp_path):
    from data_pipeline.config_check import DataConfigError

    cfg = _files_config(tmp_path, [tmp_path / "there.jsonl"])
    with pytest.raises(DataConfigError, match=f"field 'source.paths': expected existing files \\('{tmp_path}/there.jsonl' does not exist\\)"):
        pipeline.run(cfg, log=None)

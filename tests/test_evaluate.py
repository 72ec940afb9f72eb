"""launch/evaluate.py and pdt_jax/evaluation.py on hand-made manifests whose figures are known:
every number below is worked out by hand from the manifest, not read back from the code."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdt_jax import evaluation as ev

ROOT = Path(__file__).resolve().parents[1]
HASH = {"plan_vocab_size": 64, "plan_hash_buckets": 64, "plan_hash_salt": "s"}


def pdt_manifest(prompt="Tell me about Velmora.", index=0) -> dict:
    """Two streams (8 + 4 tokens), 2 rounds of 0.1 and 0.3 s, 1.0 s in all; one rollback of 3
    tokens; margins 1, 2, 3, 4; coverage items covered, covered, partial, missing; stream a's gate
    1 → 1 → 0.5 → 0.5 → 1, stream b's constant."""
    items = lambda *st: [{"index": i, "plan_item_id": i + 1, "probability": 0.5, "status": s} for i, s in enumerate(st)]
    return {
        "schema": {"manifest": ev.SCHEMA, "notes": "2.0"}, "prompt": prompt, "prompt_index": index, "baseline": None,
        "timings": {"total": 1.0, "stride_durations": [0.1, 0.3], "sync_overhead_s": 0.05,
                    "per_token": [{"top2_margin": v} for v in (4.0, 1.0, 3.0, 2.0)] + [{"stream": "a"}]},
        "streams": {"a": {"num_tokens": 8, "text": "the city of velmora has a harbour",
                          "coverage": {"plan_items": items("covered", "partial")}},
                    "b": {"num_tokens": 4, "text": "and old walls", "coverage": {"plan_items": items("covered", "missing")}}},
        "merged_answer": "the city of velmora has old walls",
        "rollbacks": [{"stream": "a", "tokens_removed": 3}],
        "gate_trace": [{"stride_index": i, "stream": "a", "value": v} for i, v in enumerate((1, 1, 0.5, 0.5, 1))]
                      + [{"stride_index": i, "stream": "b", "value": 1.0} for i in range(5)],
        "rounds": 2, **HASH,
    }


def seq_manifest(prompt="Tell me about Velmora.", index=0) -> dict:
    """12 tokens in 3.0 s: 4 tok/s."""
    return {"schema": {"manifest": ev.SCHEMA, "notes": "2.0"}, "prompt": prompt, "prompt_index": index,
            "baseline": "sequential", "timings": {"total": 3.0, "stride_durations": [], "per_token": []},
            "streams": {"seq": {"num_tokens": 12, "text": "the city of velmora has a harbour and old walls",
                                "coverage": None}},
            "rollbacks": [], "gate_trace": [], "rounds": 12, **HASH}


def test_analyze_figures_are_the_hand_computed_ones():
    a = ev.analyze(pdt_manifest(), seq_manifest())
    assert a["rounds"] == 2 and a["seconds_per_round"] == pytest.approx(0.2)
    assert a["tokens"] == 12 and a["tokens_per_s"] == pytest.approx(12.0)
    assert a["speedup_vs_sequential"] == pytest.approx(3.0)              # 12 tok/s against 4
    assert a["rollbacks"] == 1 and a["rollback_fraction"] == pytest.approx(3 / 15)
    assert a["sync_overhead_s"] == 0.05
    assert a["top2_margin_mean"] == pytest.approx(2.5)
    assert (a["top2_margin_p10"], a["top2_margin_p50"], a["top2_margin_p90"]) == pytest.approx((1.3, 2.5, 3.7))
    assert (a["coverage_covered"], a["coverage_partial"], a["coverage_missing"]) == (2, 1, 1)
    # runs: a = [2, 2, 1], b = [5] → mean 10 / 4; a's changes go down then up: one reversal.
    assert a["gate_dwell_rounds"] == pytest.approx(2.5) and a["gate_oscillations"] == 1


def test_compare_fidelity_and_timing():
    c = ev.compare(seq_manifest(), pdt_manifest())
    # sequential words: the city of velmora has a harbour and old walls (10); merged: 7 words, all in it.
    assert c["unigram_f1"] == pytest.approx(2 * 1.0 * 0.7 / 1.7)
    # bigrams: 6 in the merged answer, 5 of them in the sequential text ("has old" is not); 9 there.
    assert c["bigram_f1"] == pytest.approx(2 * (5 / 6) * (5 / 9) / (5 / 6 + 5 / 9))
    assert c["total_s_delta"] == pytest.approx(-2.0) and c["speedup"] == pytest.approx(3.0)
    with pytest.raises(ev.EvaluationError, match="different prompts"):
        ev.compare(seq_manifest("Another prompt."), pdt_manifest())


def test_summary_totals():
    rows = [ev.analyze(pdt_manifest()), ev.analyze(seq_manifest())]
    s = ev.summarize(rows)
    assert s == {"manifests": 2, "tokens": 24, "total_s": 4.0, "tokens_per_s": 6.0,
                 "rollback_fraction": pytest.approx(3 / 27)}


def write(path: Path, m) -> str:
    path.write_text(json.dumps(m))
    return str(path)


def test_bad_manifests_are_refused_naming_file_and_field(tmp_path):
    good = write(tmp_path / "good.json", pdt_manifest())
    other = pdt_manifest()
    other["plan_hash_salt"] = "t"
    with pytest.raises(ev.EvaluationError, match=r"plan_hash_salt.*other\.json"):
        ev.load([good, write(tmp_path / "other.json", other)])
    broken = tmp_path / "broken.json"
    broken.write_text("{\"schema\": ")
    with pytest.raises(ev.EvaluationError, match="broken.json: not JSON"):
        ev.load([str(broken)])
    no_schema = pdt_manifest()
    del no_schema["schema"]
    with pytest.raises(ev.EvaluationError, match="no_schema.json: field 'schema.manifest'"):
        ev.load([write(tmp_path / "no_schema.json", no_schema)])
    bad_stream = copy.deepcopy(pdt_manifest())
    bad_stream["streams"]["b"]["num_tokens"] = "4"
    with pytest.raises(ev.EvaluationError, match="streams.b.num_tokens"):
        ev.load([write(tmp_path / "bad_stream.json", bad_stream)])
    with pytest.raises(ev.EvaluationError, match="no such manifest"):
        ev.load([str(tmp_path / "missing.json")])


def test_launch_evaluate_writes_json_and_table(tmp_path):
    pdt_dir, seq_dir = tmp_path / "pdt", tmp_path / "seq"
    pdt_dir.mkdir(), seq_dir.mkdir()
    write(pdt_dir / "manifest-0000.json", pdt_manifest())
    write(pdt_dir / "manifest-0001.json", pdt_manifest("Second prompt.", 1))
    write(seq_dir / "manifest-0000.json", seq_manifest())
    write(seq_dir / "manifest-0001.json", seq_manifest("Second prompt.", 1))
    out = tmp_path / "eval" / "compare.json"
    cmd = [sys.executable, "launch/evaluate.py", "--config=configs/evaluate.py", "--config.command=compare",
           f"--config.manifests={pdt_dir}", f"--config.sequential={seq_dir}", f"--config.output={out}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [c["prompt_index"] for c in result["comparisons"]] == [0, 1]
    assert result["comparisons"][0]["speedup"] == pytest.approx(3.0)
    assert "unigram_f1" in proc.stdout.splitlines()[0]
    bad = subprocess.run(cmd[:3] + ["--config.command=score", f"--config.manifests={pdt_dir}"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "'truth'" in bad.stderr


# ---- score: the coordination task ---------------------------------------------------------------

def coordination_truth() -> dict:
    """Two articles in the task's format (data_pipeline/coordination.py), written out by hand."""
    from data_pipeline import coordination as C
    return {"task": "coordination", "seed": 0, "headings": list(C.HEADINGS),
            "pools": {"founder": ["Ardis", "Belm", "Corran"], "year": [1200, 1300]}, "phrases": C.PHRASES,
            "shared": C.SHARED, "details": list(C.DETAILS), "documents": {
                "coord-00000": {"title": "Velmora", "founder": "Ardis", "year": 1200,
                                "parts": [["founded", "lies", "population"], ["exports", "craft", "market"],
                                          ["festival", "ferries", "library", "honoured"]]},
                "coord-00001": {"title": "Zunbrak", "founder": "Belm", "year": 1300,
                                "parts": [["founded", "lies", "population"], ["ferries", "library", "market"],
                                          ["festival", "exports", "craft", "honoured"]]}}}


def answer(title, parts, index=0, sequential=False) -> dict:
    m = pdt_manifest(f"Write an encyclopedic article about {title}.", index)
    if sequential:
        m = seq_manifest(f"Write an encyclopedic article about {title}.", index)
        m["streams"] = {"seq": {"num_tokens": 30, "text": "".join(parts)}}
    else:
        m["streams"] = {f"stream_{k + 1}": {"num_tokens": 10, "text": t} for k, t in enumerate(parts)}
    return m


# Velmora, PDT: Founding introduces Ardis/1200; Trade reuses Ardis (consistent) and repeats Legacy's
# "ferries" (a detail it was not given); Legacy says Belm (contradiction) and 1200 (consistent).
VELMORA = ["Founding\nVelmora was founded by Ardis in 1200. Velmora lies in the northern hills.\n\n",
           "Trade\nVelmora exports glass lenses. Velmora is served by 12 ferries. Ardis built the first market of Velmora.\n\n",
           "Legacy\nVelmora celebrates a festival each spring. Velmora is served by 40 ferries. "
           "Velmora has honoured Belm since 1200.\n\n"]
# Zunbrak, sequential: all three headings in one text; Trade never names a founder (missing),
# Legacy reuses Belm and 1300; every statement in its planned part, nothing repeated.
ZUNBRAK = ["Founding\nZunbrak was founded by Belm in 1300. Zunbrak lies in the eastern plains. "
           "Zunbrak has a population of 44.\n\n",
           "Trade\nZunbrak keeps a library of 20 books.\n\n",
           "Legacy\nZunbrak exports dyed silk. Zunbrak has honoured Belm since 1300.\n\n"]


def test_score_counts_are_the_hand_computed_ones():
    truth = coordination_truth()
    v = ev.score_answer(answer("Velmora", VELMORA), truth)
    # slots: founder in Trade (Ardis = Ardis) and Legacy (Belm ≠ Ardis), year in Legacy (1200 = 1200)
    assert (v["slots"], v["consistent"], v["contradicted"], v.get("missing", 0)) == (3, 2, 1, 0)
    # statements: Founding {founded, lies}, Trade {exports, ferries, market}, Legacy {festival, ferries, honoured}
    assert v["statements"] == 8 and v["repeated"] == 2                  # ferries, in Trade and in Legacy
    # planned: Founding 3 (2 stated), Trade {exports, craft, market} (ferries extra, craft missing),
    # Legacy {festival, ferries, library, honoured} (library missing)
    assert (v["tp"], v["fp"], v["fn"]) == (7, 1, 3)
    z = ev.score_answer(answer("Zunbrak", ZUNBRAK, 1, sequential=True), truth)
    assert (z["slots"], z["consistent"], z.get("contradicted", 0), z["missing"]) == (3, 2, 0, 1)
    assert z["statements"] == 6 and z.get("repeated", 0) == 0
    # planned Trade {ferries, library, market}: library stated; Legacy {festival, exports, craft, honoured}
    assert (z["tp"], z.get("fp", 0), z["fn"]) == (6, 0, 4)
    # Three streams writing the Founding part: every reuse sentence is missing, everything repeated.
    same = ev.score_answer(answer("Velmora", [VELMORA[0]] * 3), truth)
    assert (same["slots"], same["missing"], same.get("consistent", 0)) == (3, 3, 0)
    assert same["repeated"] == same["statements"] == 6
    total = ev.score([("v", answer("Velmora", VELMORA)), ("z", answer("Zunbrak", ZUNBRAK, 1, sequential=True))], truth)
    assert total["answers"] == 2 and total["slots"] == 6
    assert total["consistency"] == pytest.approx(4 / 6) and total["contradictions"] == pytest.approx(1 / 6)
    assert total["missing"] == pytest.approx(1 / 6) and total["redundancy"] == pytest.approx(2 / 14)
    p, r = 13 / 14, 13 / 20
    assert (total["coverage_precision"], total["coverage_recall"]) == pytest.approx((p, r))
    assert total["coverage_f1"] == pytest.approx(2 * p * r / (p + r))


def test_sequential_parts_are_cut_at_the_next_heading_in_the_text():
    m = answer("Velmora", [VELMORA[1], VELMORA[0], VELMORA[2]], sequential=True)   # Trade written first
    parts = ev.answer_parts(m, ["Founding", "Trade", "Legacy"])
    assert parts == [VELMORA[0], VELMORA[1], VELMORA[2]]


def test_score_refuses_what_it_cannot_score(tmp_path):
    truth = coordination_truth()
    with pytest.raises(ev.EvaluationError, match="names no document"):
        ev.score_answer(answer("Nowhere", VELMORA), truth, "m.json")
    bad = tmp_path / "truth.json"
    for broken, field in ((dict(truth, task="other"), "'task'"), ({k: v for k, v in truth.items() if k != "pools"},
                                                                  "'pools'"),
                          (dict(truth, documents={"d": {"title": "X", "parts": [[]]}}), "documents.d")):
        write(bad, broken)
        with pytest.raises(ev.EvaluationError, match=field):
            ev.load_truth(str(bad))


def test_launch_evaluate_score(tmp_path):
    d = tmp_path / "bus"
    d.mkdir()
    write(d / "manifest-0000.json", answer("Velmora", VELMORA))
    write(tmp_path / "truth.json", coordination_truth())
    out = tmp_path / "score.json"
    cmd = [sys.executable, "launch/evaluate.py", "--config=configs/evaluate.py", "--config.command=score",
           f"--config.manifests={d}", f"--config.truth={tmp_path / 'truth.json'}", f"--config.output={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["score"]["consistency"] == pytest.approx(2 / 3) and result["answers"][0]["repeated"] == 2
    assert "consistency" in proc.stdout.splitlines()[0]

"""launch/infer.py and launch/replay.py end to end (in-process), and their errors on bad input."""
import json

import pytest

from launch import infer, replay

BASE = ["--config", "configs/model/pdt.py:tiny", "--max-new-tokens", "6"]


def run(argv, capsys):
    code = infer.main(BASE + argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_seed_flag_runs_and_lands_in_the_manifest(tmp_path, capsys):
    (tmp_path / "prefix.json").write_text(json.dumps({"stream_1": "Part 1: ", "stream_2": "Part 2: ", "stream_3": "Part 3: "}))
    (tmp_path / "seeds.json").write_text(json.dumps({"stream_1": "Plan: history.", "stream_2": "Plan: places.",
                                                     "stream_3": "Plan: people."}))
    (tmp_path / "plan.json").write_text(json.dumps({"stream_1": ["history"], "stream_2": ["places"], "stream_3": ["people"]}))
    (tmp_path / "notes.json").write_text(json.dumps({"stream_1": "ENT Velmora"}))
    code, out, err = run(["--prompt", "Tell me about Velmora.", "--stream", "stream_1", "--stream", "stream_2",
                          "--stream", "stream_3", "--stream-prefix-file", str(tmp_path / "prefix.json"),
                          "--seed-text-file", str(tmp_path / "seeds.json"), "--plan-text-file", str(tmp_path / "plan.json"),
                          "--notes-text-file", str(tmp_path / "notes.json"), "--read-lag-delta", "0", "--alpha", "0.5",
                          "--gate-g", "0.8", "--cadence-M", "all=2", "--cadence-M", "stream_2=4", "--stream-jsonl",
                          "--log-margins", "--memory-report", "--sync-profile", "--cf-swap", "stream_1:stream_2",
                          "--cf-shuffle", "stream_3", "--cf-freeze", "stream_2", "--cf-stale", "stream_1:1",
                          "--cf-tag", "all-flags", "--replay-artifact-dir", str(tmp_path / "art"),
                          "--replay-chunk-size", "2", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "20",
                          "--seed", "1", "--output", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert "freshly initialised" in err
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(lines) == 18  # --stream-jsonl: one line per token (3 streams × 6)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["config"]["read_lag_delta"] == 0 and m["config"]["alpha"] == 0.5 and m["config"]["gate_g"] == 0.8
    assert m["config"]["M_by_stream"] == {"stream_1": 2, "stream_2": 4, "stream_3": 2}
    assert m["plan"]["source"] == "external+seed_texts" and [c["text"] for c in m["plan"]["catalog"]] == ["history", "places", "people"]
    assert m["counterfactuals"]["swap_pairs"] == [["stream_1", "stream_2"]] and m["counterfactual_tags"] == ["all-flags"]
    assert m["reference_notes"] == {"stream_1": "ENT Velmora"}
    assert m["memory"]["max_estimate_bytes"] > 0 and "sync_overhead_s" in m["timings"]
    assert all(t["top2_margin"] >= 0 for t in m["timings"]["per_token"])  # computed: NaN would fail
    assert all(line["top2_margin"] >= 0 for line in lines)
    assert {"plan_vocab_size", "plan_hash_buckets", "plan_hash_salt", "git_sha", "git_dirty"} <= set(m)
    assert replay.main(["--artifact", str(tmp_path / "art"), "--output", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["streams"] == m["streams"] and r["gate_trace"] == m["gate_trace"]


def test_batch_prompts_file_writes_one_manifest_per_prompt(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "Tell me about Velmora."}\n\n{"prompt": "Where is Nalu Island?"}\n')
    code, _, err = run(["--prompts-file", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "out")], capsys)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["manifest-0000.json", "manifest-0001.json"]
    assert json.loads((tmp_path / "out" / files[1]).read_text())["prompt"] == "Where is Nalu Island?"


def test_sequential_baseline_manifest_is_schema_compatible(tmp_path, capsys):
    assert run(["--prompt", "Hi.", "--output", str(tmp_path / "pdt.json")], capsys)[0] == 0
    assert run(["--prompt", "Hi.", "--baseline", "sequential", "--output", str(tmp_path / "seq.json")], capsys)[0] == 0
    assert run(["--prompt", "Hi.", "--no-run-ahead", "--output", str(tmp_path / "wait.json")], capsys)[0] == 0
    pdt_m, seq_m, wait_m = (json.loads((tmp_path / f).read_text()) for f in ("pdt.json", "seq.json", "wait.json"))
    assert seq_m["baseline"] == "sequential" and set(pdt_m) - {"replay_artifact"} <= set(seq_m) | {"memory"}
    assert seq_m["streams"]["seq"]["num_tokens"] == 6
    assert set(seq_m["timings"]) >= {"bootstrap", "total", "stride_durations", "per_token", "run_ahead"}
    # --no-run-ahead: the same text, recorded as such, no round dispatched ahead
    assert pdt_m["config"]["run_ahead"] and not wait_m["config"]["run_ahead"]
    assert wait_m["streams"] == pdt_m["streams"] and wait_m["timings"]["run_ahead"]["dispatched"] == 0


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "x", "--cf-swap", "stream_1:stream_9"], "unknown stream(s) ['stream_9']; valid streams: ['stream_1', 'stream_2', 'stream_3']"),
    (["--prompt", "x", "--cf-stale", "stream_1:x"], "is not a valid value"),
    (["--prompt", "x", "--cf-ablate", "nobody"], "--cf-ablate: unknown stream(s) ['nobody']"),
    (["--prompt", "x", "--stream", "a", "--stream", "b"], "the model's streams are ['stream_1', 'stream_2', 'stream_3']"),
    (["--prompt", "x", "--checkpoint", "/nonexistent/ckpt"], "--checkpoint '/nonexistent/ckpt': not found; expected a PDT checkpoint"),
    (["--prompt", "x", "--baseline", "medusa"], "--baseline medusa: not available yet"),
    (["--prompt", "x", "--alpha", "1.5"], "alpha: expected in [0, 1]"),
    (["--prompt", "x", "--cadence-M", "stream_1=0"], "expected a positive number of tokens"),
])
def test_bad_flags_fail_with_a_clear_message(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err


def test_malformed_input_files_name_file_and_line(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    code, _, err = run(["--prompts-file", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and f"{tmp_path / 'p.jsonl'}:2: malformed JSON line" in err
    (tmp_path / "s.json").write_text('{"stream_7": "x"}')
    code, _, err = run(["--prompt", "x", "--seed-text-file", str(tmp_path / "s.json")], capsys)
    assert code == 2 and "unknown stream(s) ['stream_7']" in err


def test_replay_refuses_a_broken_artifact(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text('{"version": "0.1"}')
    assert replay.main(["--artifact", str(tmp_path), "--output", str(tmp_path / "o.json")]) == 2
    assert "field 'version': expected '1.0'" in capsys.readouterr().err

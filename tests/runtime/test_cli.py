"""launch/infer.py and launch/replay.py end to end (in-process): the seed README's flags, the
config files and their overrides, counterfactuals acting on an opened sidecar, and errors on bad
input."""
import json

import jax
import jax.numpy as jnp
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
    (["--prompt", "x", "--infer.max_new_tokns=3"], "unknown config field"),
    (["--prompt", "x", "--config.sidecar.lag=minus"], "--config.sidecar.lag=minus"),
    (["--prompt", "x", "--mesh", "data=2,pipeline=2"], "mesh axis 'pipeline' unknown"),
    (["--prompt", "x", "--mesh", "data=64"], "needs 64 devices, found 1"),
    (["--prompt", "x", "--no-such-flag"], "Unknown command line flag 'no-such-flag'"),
    (["--prompt", "x", "stray"], "unexpected arguments ['stray']"),
    (["--prompt", "x", "--infer=configs/nope.py"], "--infer configs/nope.py: file 'configs/nope.py' not found"),
    (["--prompts-file", "configs"], "--prompts-file 'configs': expected a JSONL file"),
    (["--prompt", "x", "--seed-text-file", "configs"], "--seed-text-file 'configs': cannot be read as a file"),
    (["--prompt", "x", "--baseline", "sequential", "--memory-report"], "the sequential baseline (one generate call)"),
    (["--prompt", "x", "--infer=configs/infer.py:huge"], "unknown variant 'huge'"),
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
    assert replay.main(["--artifact", str(tmp_path / "manifest.json"), "--output", str(tmp_path / "o.json")]) == 2
    assert "not a replay artifact directory" in capsys.readouterr().err


def test_config_overrides_and_aliases_set_the_same_fields(tmp_path, capsys):
    """--infer.* and --config.* overrides (config_flags) reach the run like the seed aliases do."""
    code = infer.main(["--config=configs/model/pdt.py:tiny", "--prompt", "Hi.", "--infer.max_new_tokens=5",
                       "--config.sidecar.lag=0", "--infer.counterfactuals.ablate=stream_2", "--mesh", "data=1",
                       "--output", str(tmp_path / "m.json")])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["config"]["max_new_tokens"] == 5 and m["config"]["read_lag_delta"] == 0  # Δ from the model config
    assert m["counterfactuals"]["ablate_streams"] == ["stream_2"] and m["config"]["mesh"]["data"] == 1
    assert all(s["num_tokens"] == 5 for s in m["streams"].values())
    assert infer.main(["--help"]) == 0 and "--read-lag-delta" in capsys.readouterr().out


@pytest.fixture(scope="module")
def opened_checkpoint(tmp_path_factory):
    """A tiny PDT checkpoint whose sidecar acts: SNC and adapters with non-zero output projections."""
    from pdt_jax import config_files, model as pdt
    from pdt_jax.sidecar.checkpoint import save_sidecar
    from pdt_jax.trunk import Trunk

    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))
    root = tmp_path_factory.mktemp("ckpt")
    Trunk.random(cfg.trunk, seed=0, init_std=0.1).save(str(root / "trunk"))
    side = pdt.init_sidecar(cfg, jax.random.key(1))
    keys = iter(jax.random.split(jax.random.key(2), 16))
    side["layers"] = [dict(lp, snc=dict(lp["snc"], o=0.5 * jax.random.normal(next(keys), lp["snc"]["o"].shape)),
                           adapter=dict(lp["adapter"], up=0.5 * jax.random.normal(next(keys), lp["adapter"]["up"].shape)),
                           snc_gate=jnp.float32(2.0), adapter_gate=jnp.float32(2.0)) for lp in side["layers"]]
    save_sidecar(str(root / "sidecar.safetensors"), side, cfg.trunk, cfg.sidecar)
    return root


def margins_by_round(m):
    """{(stream, round): the top-2 logit margins of its tokens}: a function of the logits."""
    out = {}
    for t in m["timings"]["per_token"]:
        out.setdefault((t["stream"], t["stride_index"]), []).append(t["top2_margin"])
    return out


@pytest.mark.parametrize("flag,value,affected,at", [
    ("--cf-ablate", "stream_3", {"stream_3"}, 0),              # snapshot 0 hidden from stream 3 from round 0
    ("--cf-swap", "stream_1:stream_2", {"stream_1", "stream_2", "stream_3"}, 1),  # every reader: who wrote the notes
    ("--cf-shuffle", "stream_3", {"stream_3"}, 1),             # stream 3's note vectors permuted (once there are several)
    ("--cf-freeze", "stream_2", {"stream_2"}, 1),              # stream 2 keeps reading round 0's window
    ("--cf-stale", "stream_1:1", {"stream_1"}, 1),             # stream 1 loses the newest published note
])
def test_each_counterfactual_changes_the_logits_of_the_streams_it_edits(flag, value, affected, at, opened_checkpoint,
                                                                       tmp_path, capsys):
    """With a sidecar that acts, each counterfactual changes the logits (their top-2 margins) of the
    streams whose window it edits, from the first round its edit can matter, and no other stream's
    until then. Greedy, Δ = 0, every block committed, the gate fixed: nothing else moves the logits.
    (Two compiled programs may differ in the last bits: 'unchanged' allows 1e-5, 'changed' needs 1e-3.)"""
    common = ["--prompt", "Tell me about Velmora.", "--checkpoint", str(opened_checkpoint), "--max-new-tokens", "8",
              "--read-lag-delta", "0", "--readiness-threshold", "0", "--no-gate-annealing", "--log-margins"]
    assert run(common + ["--output", str(tmp_path / "base.json")], capsys)[0] == 0
    code, _, err = run(common + [flag, value, "--output", str(tmp_path / "cf.json")], capsys)
    assert code == 0, err
    base = margins_by_round(json.loads((tmp_path / "base.json").read_text()))
    cf = margins_by_round(json.loads((tmp_path / "cf.json").read_text()))
    moved = lambda stream, r: max(abs(a - b) for a, b in zip(cf[(stream, r)], base[(stream, r)]))
    for stream in ("stream_1", "stream_2", "stream_3"):
        for r in range(at):
            assert moved(stream, r) <= 1e-5, (stream, r)
        if stream in affected:
            assert moved(stream, at) > 1e-3, stream
        else:
            assert moved(stream, at) <= 1e-5, stream

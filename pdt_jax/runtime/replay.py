"""Replay artifacts: everything the orchestrator received from the device, so that the whole host
side (cadence, commit / rollback, gate annealing, coverage, manifest) re-runs on CPU without
trunk weights and reproduces the original decisions exactly.

    DIR/manifest.json        version, run context (prompts, streams, options, model summary,
                             tokenizer, hashing metadata, git), and the call log: every engine call
                             with its arguments, and which chunk file holds its result (a round
                             dispatched ahead and then reverted was never fetched: it has none)
    DIR/start.npz            plan ids, snapshot 0; planner logits in DIR/planner_logits-NNNN.npz chunks
    DIR/rounds-NNNN.npz      round results, ``chunk_size`` rounds per file (stacked)
    DIR/plan_catalog.json    the plan catalog per prompt

Arrays are written with ``numpy.savez`` and read with ``allow_pickle=False``: no pickle anywhere.
"""
from __future__ import annotations

import json
import os

import numpy as np

from pdt_jax.runtime.fields import NAMES as ROUND_KEYS

VERSION = "1.0"


class ReplayError(ValueError):
    pass


def _atomic_savez(path: str, **arrays) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class RecordingEngine:
    """An engine that passes every call through to another engine and writes what came back."""

    def __init__(self, engine, directory: str, chunk_size: int = 256):
        if chunk_size < 1:
            raise ValueError(f"--replay-chunk-size: expected >= 1, found {chunk_size}")
        self.engine, self.dir, self.chunk_size = engine, directory, chunk_size
        os.makedirs(directory, exist_ok=True)
        self.calls: list[dict] = []
        self._rounds: list[dict] = []
        self._round_calls = 0
        self._fetched = 0
        self._chunks = 0

    def start(self, ids, lengths, plan_ids, seed_vectors):
        out = self.engine.start(ids, lengths, plan_ids, seed_vectors)
        logits = out["planner_logits"]
        flat = logits.reshape(-1, logits.shape[-1])
        files = []
        for i in range(0, flat.shape[0], self.chunk_size):
            name = f"planner_logits-{len(files):04d}.npz"
            _atomic_savez(os.path.join(self.dir, name), logits=flat[i:i + self.chunk_size])
            files.append(name)
        _atomic_savez(os.path.join(self.dir, "start.npz"), plan_ids=out["plan_ids"], snapshot0=out["snapshot0"])
        self.calls.append({"call": "start", "plan_source": out["plan_source"], "planner_logits_files": files,
                           "planner_logits_shape": list(logits.shape)})
        return out

    def submit(self, window_round, active, remaining, gate):
        fetch = self.engine.submit(window_round, active, remaining, gate)
        index = self._round_calls
        self._round_calls += 1
        call = {"call": "round", "index": index, "window_round": int(window_round),
                "active": np.asarray(active).tolist(), "remaining": np.asarray(remaining).tolist(),
                "gate": np.asarray(gate, np.float64).tolist()}
        self.calls.append(call)

        def fetch_and_record():
            out = fetch()
            n = self._fetched  # results are stored in the order they are fetched
            self._fetched += 1
            call.update(chunk=f"rounds-{n // self.chunk_size:04d}.npz", offset=n % self.chunk_size)
            self._rounds.append({k: out[k] for k in ROUND_KEYS})
            if len(self._rounds) == self.chunk_size:
                self._flush()
            return out
        return fetch_and_record

    def _flush(self):
        if self._rounds:
            stacked = {k: np.stack([r[k] for r in self._rounds]) for k in ROUND_KEYS}
            _atomic_savez(os.path.join(self.dir, f"rounds-{self._chunks:04d}.npz"), **stacked)
            self._chunks += 1
            self._rounds = []

    def publish(self, rows, stamp):
        self.calls.append({"call": "publish", "rows": np.asarray(rows).tolist(), "stamp": int(stamp)})
        return self.engine.publish(rows, stamp)

    def rollback(self, rows, stamp):
        self.calls.append({"call": "rollback", "rows": np.asarray(rows).tolist(), "stamp": int(stamp)})
        return self.engine.rollback(rows, stamp)

    def mark(self):
        self.calls.append({"call": "mark"})
        return self.engine.mark()

    def revert(self):
        self.calls.append({"call": "revert"})
        return self.engine.revert()

    def memory_bytes(self):
        return self.engine.memory_bytes()

    def finish(self, context: dict, catalogs) -> str:
        self._flush()
        manifest = {"version": VERSION, "chunk_size": self.chunk_size, **context, "calls": self.calls}
        with open(os.path.join(self.dir, "plan_catalog.json.tmp"), "w") as f:
            json.dump(catalogs, f, indent=1)
        os.replace(os.path.join(self.dir, "plan_catalog.json.tmp"), os.path.join(self.dir, "plan_catalog.json"))
        path = os.path.join(self.dir, "manifest.json")
        with open(path + ".tmp", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(path + ".tmp", path)
        return path


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise ReplayError(f"{directory}: not a replay artifact directory (no manifest.json)") from None
    except OSError as e:
        raise ReplayError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise ReplayError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("version") != VERSION:
        raise ReplayError(f"{path}: field 'version': expected {VERSION!r}, found {manifest.get('version')!r}")
    return manifest


class ReplayEngine:
    """An engine that serves the recorded results in call order, and refuses to go on if the
    orchestrator asks for something the recording did not do (a replay that diverged would be
    meaningless)."""

    def __init__(self, directory: str):
        self.dir = directory
        self.manifest = read_manifest(directory)
        self.calls = list(self.manifest["calls"])
        self.pos = 0
        self._cache: dict[str, dict] = {}

    def _next(self, kind: str) -> dict:
        if self.pos >= len(self.calls):
            raise ReplayError(f"replay diverged: the run asks for a '{kind}' call the recording does not have")
        call = self.calls[self.pos]
        if call["call"] != kind:
            raise ReplayError(f"replay diverged at call {self.pos}: recorded '{call['call']}', asked '{kind}'")
        self.pos += 1
        return call

    def _load(self, name: str) -> dict:
        if name not in self._cache:
            path = os.path.join(self.dir, name)
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._cache[name] = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise ReplayError(f"{path}: unreadable replay chunk ({e})") from e
        return self._cache[name]

    def start(self, ids, lengths, plan_ids, seed_vectors):
        call = self._next("start")
        start = self._load("start.npz")
        logits = np.concatenate([self._load(f)["logits"] for f in call["planner_logits_files"]])
        return {"plan_ids": start["plan_ids"], "snapshot0": start["snapshot0"], "plan_source": call["plan_source"],
                "planner_logits": logits.reshape(call["planner_logits_shape"])}

    def submit(self, window_round, active, remaining, gate):
        call = self._next("round")
        asked = {"window_round": int(window_round), "active": np.asarray(active).tolist(),
                 "remaining": np.asarray(remaining).tolist()}
        for k, v in asked.items():
            if call[k] != v:
                raise ReplayError(f"replay diverged at round call {call['index']}: field '{k}' recorded {call[k]}, asked {v}")
        if not np.allclose(call["gate"], np.asarray(gate, np.float64)):
            raise ReplayError(f"replay diverged at round call {call['index']}: gate recorded {call['gate']}, asked {list(gate)}")

        def fetch():
            if "chunk" not in call:
                raise ReplayError(f"replay diverged at round call {call['index']}: the recording reverted this "
                                  f"round without fetching it, the replay asks for its results")
            chunk = self._load(call["chunk"])
            out = {k: chunk[k][call["offset"]] for k in ROUND_KEYS}
            out["_dispatch_s"] = out["_wait_s"] = 0.0
            return out
        return fetch

    def publish(self, rows, stamp):
        call = self._next("publish")
        if call["rows"] != np.asarray(rows).tolist() or call["stamp"] != int(stamp):
            raise ReplayError(f"replay diverged at call {self.pos - 1}: publish differs from the recording")

    def mark(self):
        self._next("mark")

    def revert(self):
        self._next("revert")

    def rollback(self, rows, stamp):
        call = self._next("rollback")
        if call["rows"] != np.asarray(rows).tolist() or call["stamp"] != int(stamp):
            raise ReplayError(f"replay diverged at call {self.pos - 1}: rollback differs from the recording")

    def memory_bytes(self):
        return {"estimate_bytes": 0, "device_bytes_in_use": 0}


def replay(directory: str):
    """Re-runs the orchestrator on the recorded tensors. Returns (manifests, per-token events)."""
    from pdt_jax.runtime import manifest as manifest_lib
    from pdt_jax.runtime.options import RuntimeOptions
    from pdt_jax.runtime.orchestrator import Orchestrator
    from pdt_jax.model import PDTConfig
    from pdt_jax.sidecar.config import SidecarConfig
    from pdt_jax.tokenizer import Tokenizer
    from pdt_jax.trunk.config import TrunkConfig

    engine = ReplayEngine(directory)
    ctx = engine.manifest
    o = dict(ctx["options"])
    o.setdefault("run_ahead", False)  # artifacts recorded before run-ahead existed made no such calls
    cfg = PDTConfig(TrunkConfig.from_mapping(ctx["model"]["trunk"]), SidecarConfig.from_mapping(ctx["model"]["sidecar"]),
                    mesh=tuple((ctx["model"].get("mesh") or {}).items()))
    opts = RuntimeOptions.from_mapping(o).resolve(cfg.sidecar)
    try:
        tokenizer = Tokenizer.from_file(ctx["tokenizer"])
        decode = tokenizer.decode
    except Exception:  # the artifact stays replayable without the tokenizer: ids as text
        decode = lambda ids: " ".join(map(str, ids))
    with open(os.path.join(directory, "plan_catalog.json")) as f:
        catalogs = json.load(f)
    names = ctx["streams"]
    B = ctx.get("num_prompts", len(ctx["prompts"])) * len(names)  # prompts padded for the mesh included
    ids = np.zeros((B, 1), np.int32)
    orch = Orchestrator(engine, names, opts, cfg.sidecar.block_size, cfg.trunk.eos_token_ids, decode=decode,
                        bus_capacity=cfg.sidecar.bus_capacity)
    rec = orch.run(ids, np.ones(B, np.int32))
    if engine.pos != len(engine.calls):
        raise ReplayError(f"replay diverged: {len(engine.calls) - engine.pos} recorded calls were never asked for")
    manifests = manifest_lib.build(rec, prompts=ctx["prompts"], stream_names=names, opts=opts, model_cfg=cfg,
                                   decode=decode, catalogs=catalogs, extra=dict(ctx.get("extra") or {}, replayed_from=directory))
    from pdt_jax.runtime.orchestrator import token_records
    events = token_records(rec, orch.token_text, opts.log_margins)[1]
    # Prompts repeated to fill the mesh's row groups were decoded, but are no one's output.
    return manifests, [e for e in events if e["prompt_index"] < len(ctx["prompts"])]

"""PDT parallel inference: P prompts × K streams decoded together in synchronized rounds.

    python launch/infer.py --config configs/model/pdt.py:tiny --prompt "Tell me about Velmora." \\
        --stream stream_1 --stream stream_2 --stream stream_3 --max-new-tokens 32 --output manifest.json

Every flag of the seed README is here; ``--help`` lists them. Without ``--checkpoint`` the model
config runs with freshly initialised parameters (a warning says so), so every flag can be tried
without weights.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASELINES = ("sequential", "medusa", "lookahead", "eagle")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--config", required=True, help="model config file[:variant], e.g. configs/model/pdt.py:tiny")
    a("--checkpoint", help="PDT checkpoint dir (trunk/ + sidecar.safetensors) or a trunk dir (HF or converted)")
    a("--tokenizer", default="auto", help="tokenizer.json (default: the checkpoint's, or the tiny BPE for 512-id models)")
    a("--prompt", help="one prompt")
    a("--prompts-file", help="JSONL, one {\"prompt\": ...} per line: all prompts run in one batch")
    a("--system", default=None, help="harmony system message")
    a("--stream", action="append", default=[], help="stream name (repeatable); must match the model's streams")
    a("--stream-prefix-file", help="JSON {stream: prefix text}")
    a("--seed-text-file", help="JSON {stream: seed text} injected as snapshot 0")
    a("--seed-text", action="append", default=[], metavar="STREAM=TEXT")
    a("--plan-text-file", help="JSON {stream: [plan item, ...]}: the plan catalog (hashed ids, coverage)")
    a("--notes-text-file", help="JSON {stream: notes text} attached to the manifest for later scoring")
    a("--read-lag-delta", type=int, default=None, help="Δ in rounds (0 = visible in the next round)")
    a("--alpha", type=float, default=1.0, help="blend attended and base logits (1 = attended only)")
    a("--gate-g", type=float, default=1.0, help="runtime gate g on the SNC and adapter residuals (0 = trunk)")
    a("--max-new-tokens", type=int, default=512)
    a("--cadence-M", action="append", default=[], metavar="STREAM=M|all=M")
    a("--cadence-mode", choices=("deterministic", "stochastic", "adaptive"), default="deterministic")
    a("--cadence-max-interval", type=int, default=0)
    a("--readiness-threshold", type=float, default=None, help="γ (default: the model config's)")
    a("--max-retries", type=int, default=2, help="rollback retries per round before a forced commit")
    a("--no-gate-annealing", action="store_true")
    a("--stream-jsonl", action="store_true", help="print one JSON line per emitted token")
    a("--log-margins", action="store_true")
    a("--memory-report", action="store_true")
    a("--sync-profile", action="store_true")
    a("--no-run-ahead", action="store_true",
      help="wait for each round's decisions before dispatching the next (default: dispatch one round ahead)")
    a("--cf-swap", action="append", default=[], metavar="A:B")
    a("--cf-shuffle", action="append", default=[], metavar="STREAM")
    a("--cf-freeze", action="append", default=[], metavar="STREAM")
    a("--cf-stale", action="append", default=[], metavar="STREAM:DELTA")
    a("--cf-ablate", action="append", default=[], metavar="STREAM|all")
    a("--cf-tag", default=None)
    a("--baseline", choices=BASELINES, default=None)
    a("--replay-artifact-dir")
    a("--replay-chunk-size", type=int, default=256)
    a("--output", help="manifest path (a directory with --prompts-file)")
    a("--verbose", action="store_true")
    a("--temperature", type=float, default=0.0)
    a("--top-p", type=float, default=1.0)
    a("--top-k", type=int, default=0)
    a("--seed", type=int, default=0)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from pdt_jax.runtime.cli import run_cli
    try:
        return run_cli(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""CPU logit replay: re-run the orchestrator from a replay artifact, without trunk weights.

    python launch/replay.py --artifact experiments/replay/demo_run --output replay_manifest.json [--stream-jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--output", required=True, help="manifest path (a directory when the run read --prompts-file)")
    ap.add_argument("--stream-jsonl", action="store_true")
    ap.add_argument("--include-events", action="store_true", help="keep the per-token event log in the manifest")
    args = ap.parse_args(argv)
    from pdt_jax.runtime.replay import ReplayError, replay
    try:
        manifests, events = replay(args.artifact)
    except (ReplayError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.stream_jsonl:
        for e in events:
            print(json.dumps(e), flush=True)
    if args.include_events:
        for m in manifests:
            m["events"] = [e for e in events if e["prompt_index"] == m["prompt_index"]]
    if len(manifests) == 1 and not manifests[0].get("prompt_file"):  # as launch/infer.py wrote them
        with open(args.output, "w") as f:
            json.dump(manifests[0], f, indent=1)
    else:
        os.makedirs(args.output, exist_ok=True)
        for i, m in enumerate(manifests):
            with open(os.path.join(args.output, f"manifest-{i:04d}.json"), "w") as f:
                json.dump(m, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

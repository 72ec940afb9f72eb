"""PDT parallel inference: P prompts × K streams decoded together in synchronized rounds.

    python launch/infer.py --config=configs/model/pdt.py:tiny --prompt "Tell me about Velmora." \\
        --stream stream_1 --stream stream_2 --stream stream_3 --max-new-tokens 32 --output manifest.json

Two ml_collections configs, loaded with ``config_flags``: ``--config`` (the model, its mesh and
sharding rules) and ``--infer`` (inference settings, default ``configs/infer.py``); any field can
be overridden (``--config.mesh.expert=8``, ``--infer.max_new_tokens=32``). Every flag of the seed
README is an alias onto those fields; ``--help`` lists them. Without ``--checkpoint`` the model
config runs with freshly initialised parameters (a warning says so).
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INFER = os.path.join(ROOT, "configs", "infer.py")


def main(argv=None) -> int:
    from pdt_jax.runtime.cli import main as run
    return run([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv), DEFAULT_INFER)


if __name__ == "__main__":
    sys.exit(main())

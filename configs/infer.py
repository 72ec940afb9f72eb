"""Inference settings for ``launch/infer.py`` (the model, its mesh and sharding come from --config).

    python launch/infer.py --config=configs/model/pdt.py:tiny --infer=configs/infer.py \\
        --infer.prompt="Tell me about Velmora." --infer.max_new_tokens=32 --infer.output=manifest.json

Every flag of the seed README is an alias onto one of these fields (``--max-new-tokens 32`` sets
``infer.max_new_tokens``; ``launch/infer.py --help`` lists them). Variants: ``get_config('demo')``
caps the length for a quick try. Empty strings and empty tuples mean "not given"; the read lag Δ
and the readiness threshold γ default to the model config's (None until set).
"""
from ml_collections import ConfigDict, config_dict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    # What to decode and where the model is.
    c.prompt = ""                      # one prompt ...
    c.prompts_file = ""                # ... or JSONL {"prompt": ...} per line, decoded together as P×K rows
    c.system = ""                      # harmony system message
    c.streams = ()                     # must equal the model's streams, in order (empty: not checked)
    c.stream_prefix_file = ""          # JSON {stream: prefix}
    c.seed_text_file = ""              # JSON {stream: seed text} → snapshot 0
    c.seed_texts = ()                  # "STREAM=TEXT" entries (after the file)
    c.plan_text_file = ""              # JSON {stream: [plan item, ...]}
    c.notes_text_file = ""             # JSON {stream: notes text}, attached to the manifest
    c.checkpoint = ""                  # PDT checkpoint (trunk/ + sidecar.safetensors) or a trunk directory
    c.tokenizer = "auto"               # tokenizer.json, or "auto" (next to the checkpoint; tiny BPE for tiny models)
    c.baseline = ""                    # "" (PDT) or "sequential"; medusa|lookahead|eagle are not built yet
    # Decoding and the commit protocol.
    c.max_new_tokens = 512
    c.read_lag_delta = config_dict.placeholder(int)          # Δ in rounds; None = the model config's
    c.readiness_threshold = config_dict.placeholder(float)   # γ; None = the model config's
    c.max_retries = 2
    c.gate_g = 1.0
    c.alpha = 1.0
    c.temperature = 0.0
    c.top_p = 1.0
    c.top_k = 0
    c.seed = 0
    c.run_ahead = True
    c.cadence = ConfigDict(dict(mode="deterministic", every=(), max_interval=0))   # every: "STREAM=M" / "all=M"
    c.gate_annealing = ConfigDict(dict(enabled=True, decay=0.6, min_value=0.1, recovery=0.05,
                                       stability_margin=0.05, cooldown=1))
    c.counterfactuals = ConfigDict(dict(ablate=(), ablate_keep_seed=False, swap=(), shuffle=(), freeze=(), stale=(),
                                        tag=""))
    # Outputs and telemetry.
    c.output = ""                      # manifest path (a directory with prompts_file)
    c.verbose = False
    c.stream_jsonl = False
    c.log_margins = False
    c.memory_report = False
    c.sync_profile = False
    c.replay_artifact_dir = ""
    c.replay_chunk_size = 256
    if arg in (None, ""):
        return c
    if arg == "demo":
        c.max_new_tokens = 32
        return c
    raise ValueError(f"configs/infer.py: unknown variant {arg!r}; valid: '', 'demo'")

"""Shared defaults of the dataset configs (not a runnable config itself; see synthetic.py,
files.py and openai_teacher.py)."""
from ml_collections import config_dict


def base_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "base"
    c.work_dir = "runs/data/base"      # every stage writes under work_dir/<stage>/
    c.num_streams = 3                  # K; streams are named stream_1..stream_K
    c.progress = True                  # tqdm bars on stderr

    c.source = config_dict.ConfigDict()
    c.source.kind = "synthetic"        # "synthetic" (world generator), "coordination" (the demo task) or "files"
    c.source.paths = ""                # files: comma-separated .jsonl / .parquet paths
    c.source.num_documents = 300       # synthetic / coordination only
    c.source.seed = 0                  # synthetic / coordination only

    c.preflight = config_dict.ConfigDict()
    c.preflight.min_chars = 200
    c.preflight.max_chars = 200_000
    c.preflight.min_sections = 3       # raised to num_streams if smaller
    c.preflight.max_control_ratio = 0.01
    c.preflight.max_non_latin_ratio = 0.3
    c.preflight.dedupe = True
    c.preflight.llm_classifier = False  # needs the openai teacher

    c.teacher = config_dict.ConfigDict()
    c.teacher.kind = "procedural"      # "procedural" (offline) or "openai"
    c.teacher.concurrency = 4          # documents in flight (and, for openai, requests in flight)
    c.teacher.openai = config_dict.ConfigDict()
    o = c.teacher.openai
    o.base_url = "https://api.openai.com/v1"  # any OpenAI-compatible endpoint
    o.model = "gpt-4.1"
    o.api_key_env = "OPENAI_API_KEY"   # the key itself never goes into a config
    o.dotenv_path = ".env"
    o.concurrency = 8                  # requests in flight
    o.timeout_s = 120.0                # a deadline for the whole request (headers and body)
    o.max_response_bytes = 512_000     # a larger HTTP answer is a malformed response
    o.max_retries = 6                  # transient failures (408/409/429/5xx/timeouts)
    o.backoff_base_s = 1.0
    o.backoff_max_s = 30.0
    o.jitter = 0.2                     # +-20 % of each backoff delay
    o.retry_after_max_s = 120.0        # cap on a server's Retry-After
    o.max_invalid_retries = 2          # re-asks after truncated / non-JSON / off-schema answers
    o.temperature = 0.2
    o.max_tokens = 8192
    o.strict_schema = False
    o.cache_dir = "runs/data/teacher_cache"
    o.prompt_price_per_mtok = 2.0      # USD per million prompt tokens (gpt-4.1 list price)
    o.completion_price_per_mtok = 8.0

    c.plans = config_dict.ConfigDict()
    c.plans.max_plan_items = 16        # planner slots (PDT default S = 16)
    c.plans.max_entities = 32          # per stream; a longer list is an invalid answer
    c.plans.lint = "fail"              # cross-stream reference lint: "fail" or "warn"
    c.plans.prompt_template = "Write an encyclopedic article about {title}."

    c.notes = config_dict.ConfigDict()
    c.notes.num_blocks = 4             # M snapshots after snapshot 0
    c.notes.max_entities = 64          # per stream answer; more is an invalid answer
    c.notes.max_facts = 128
    c.notes.lag = 1                    # Δ used for the readiness labels
    c.notes.speculative_variants = 2
    c.notes.drop_fact = 0.2
    c.notes.swap_object = 0.15

    c.collate = config_dict.ConfigDict()
    c.collate.fractions = (0.8, 0.1, 0.1)
    c.collate.split_salt = "pdt-split-v1"

    c.export = config_dict.ConfigDict()
    c.export.plan_vocab_size = 65536   # V_p
    c.export.plan_hash_buckets = 65536
    c.export.plan_hash_salt = "pdt-plan-v1"
    return c

"""python -m data_pipeline run --config=configs/data/openai_teacher.py[:tiny] --config.teacher.openai.base_url=http://127.0.0.1:8000/v1

Synthetic-world corpus with an LLM teacher behind any OpenAI-compatible endpoint (OpenAI, vLLM,
llama.cpp server...). The key comes from $OPENAI_API_KEY or OPENAI_API_KEY=... in .env.
``tiny`` = 6 documents, 2 requests in flight.
"""
from configs.data.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "openai"
    c.work_dir = "runs/data/openai"
    c.teacher.kind = "openai"
    c.teacher.concurrency = 8
    c.teacher.openai.cache_dir = "runs/data/openai/teacher_cache"
    if arg == "tiny":
        c.name = "openai_tiny"
        c.work_dir = "runs/data/openai_tiny"
        c.source.num_documents = 6
        c.teacher.concurrency = 2
        c.teacher.openai.concurrency = 2
        c.teacher.openai.cache_dir = "runs/data/openai_tiny/teacher_cache"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (use 'tiny')")
    return c

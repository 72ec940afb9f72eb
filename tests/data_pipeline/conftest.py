"""Shared fixtures: tiny configs rooted in tmp_path, a local teacher server, a file walker."""
from __future__ import annotations

from pathlib import Path

import pytest

from configs.data.openai_teacher import get_config as openai_config
from configs.data.synthetic import get_config as synthetic_config
from data_pipeline import synthetic_world
from data_pipeline.teacher_server import TeacherServer

API_KEY = "sk-test-DO-NOT-LEAK-7f3a9c"


def procedural_config(work_dir: Path, num_documents: int = 12):
    c = synthetic_config("tiny")
    c.work_dir = str(work_dir)
    c.progress = False
    c.source.num_documents = num_documents
    return c


def openai_teacher_config(work_dir: Path, base_url: str, num_documents: int = 6):
    c = openai_config("tiny")
    c.work_dir = str(work_dir)
    c.progress = False
    c.source.num_documents = num_documents
    o = c.teacher.openai
    o.base_url = base_url
    o.cache_dir = str(Path(work_dir) / "teacher_cache")
    o.dotenv_path = None
    o.timeout_s = 0.4
    o.backoff_base_s = 0.005
    o.backoff_max_s = 0.05
    o.max_retries = 5
    o.max_invalid_retries = 2
    return c


def world(num_documents: int):
    return synthetic_world.build_world(num_documents, 0)[0]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return API_KEY


@pytest.fixture
def make_server():
    servers = []

    def make(docs, **kw):
        srv = TeacherServer(docs, **kw)
        srv.base_url = srv.start()
        servers.append(srv)
        return srv
    yield make
    for s in servers:
        s.stop()


def output_files(work_dir: Path) -> dict[str, bytes]:
    """Every data artefact by relative path; reports (wall-clock timings) and the cache excluded."""
    out = {}
    for p in sorted(Path(work_dir).rglob("*")):
        rel = p.relative_to(work_dir).as_posix()
        if p.is_file() and p.name != "report.json" and not rel.startswith("teacher_cache"):
            out[rel] = p.read_bytes()
    return out

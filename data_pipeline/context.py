"""What every stage receives: the config, the work directory, the document limit, the teacher."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from data_pipeline.storage import fingerprint, read_json, write_json


@dataclasses.dataclass
class Context:
    config: Any
    work_dir: Path
    limit: int | None = None
    _teacher: Any = None

    @property
    def teacher(self):
        if self._teacher is None:
            from data_pipeline.teachers import make_teacher
            self._teacher = make_teacher(self.config)
        return self._teacher

    def redact(self, text: str) -> str:
        redact = getattr(self._teacher, "redact", None)
        return redact(text) if redact else text

    def stage_dir(self, name: str) -> Path:
        return self.work_dir / name

    def section(self, name: str) -> dict:
        """A config section as plain data (for fingerprints)."""
        return json.loads(self.config[name].to_json())

    def num_streams(self) -> int:
        return int(self.config.num_streams)

    def close(self) -> None:
        if self._teacher is not None:
            self._teacher.close()


def stage_is_current(stage_dir: Path, fp: str, outputs: list[Path]) -> bool:
    """A whole-dataset stage is done when its report carries ``fp`` and its outputs exist."""
    report = stage_dir / "report.json"
    return report.exists() and read_json(report).get("fingerprint") == fp and all(
        p.exists() for p in outputs)


def write_report(stage_dir: Path, fp: str, started: float, counts: dict, extra: dict) -> dict:
    """``report.json``: counts, throughput, teacher usage. The only non-reproducible file (timings)."""
    wall = time.perf_counter() - started
    report = {"fingerprint": fp, "counts": counts, "wall_s": round(wall, 4),
              "documents_per_s": round(counts.get("processed", counts.get("input", 0)) /
                                       max(wall, 1e-9), 3), **extra}
    write_json(stage_dir / "report.json", report)
    return report


def files_fingerprint(paths: list[Path], extra: Any) -> str:
    """Fingerprint of input file contents plus config; used by whole-dataset stages."""
    import hashlib
    h = hashlib.sha256(fingerprint(extra).encode())
    for p in paths:
        h.update(str(p.name).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()

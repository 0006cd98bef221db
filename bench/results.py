"""The benches' resumable results files: one JSON object per line, one line per finished run.

A series is resumable because each run is appended as soon as it ends (a killed series loses
only the run in progress) and a bench skips the runs whose keys are already in the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def read_results(path: str | Path) -> list[dict]:
    """The runs recorded in ``path`` so far, oldest first; none when the file does not exist."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_result(path: str | Path, row: dict) -> None:
    """Append ``row`` to ``path`` as one line, flushed to disk before returning."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def recorded(rows: list[dict], **fields) -> bool:
    """Whether a run with these field values is among ``rows`` already."""
    return any(all(r.get(k) == v for k, v in fields.items()) for r in rows)


def series(path: str | Path, table: Callable[[list[dict]], str], table_only: bool) -> list[dict] | None:
    """The runs recorded in ``path``; with ``table_only``, print their ``table`` and return None."""
    rows = read_results(path)
    if not table_only:
        return rows
    print(table(rows))
    return None

"""The training log: one JSON object per logged optimizer step (loss terms, learning rates, time).

`train_log.jsonl` in the output folder, appended and flushed line by line so a crash loses at most
the line being written. On resume the lines after the checkpoint's step are dropped (they belong
to steps that will be redone), rewriting the file atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from laid.io import write_text


def read_log(path: str | Path) -> list[dict]:
    """All records of a training log (notes included, as {"note": ...})."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: everything before it is valid
    return out


class TrainLog:
    def __init__(self, path: str | Path, keep_until_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= keep_until_step]
        write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)

    def _append(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def write(self, step: int, **values) -> None:
        self._append({"step": int(step), **values})

    def note(self, text: str, step: int = 0) -> None:
        """A free-text line (e.g. the vocabulary handling of the KL), kept across resumes (once)."""
        if self.enabled and any(r.get("note") == text for r in read_log(self.path)):
            return
        self._append({"step": int(step), "note": text})

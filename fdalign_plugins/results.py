"""Results as JSON lines: one record per (dataset, adapter, encoder, shots, seed).

Appends are durable (write, flush, fsync). A line torn by a kill mid-write is detected
on the next open and cut off with a warning, so the file only ever holds whole records.

What varies between two runs of the same command (wall times, the clock) is not part of
a record: it goes, keyed like the record, to ``timings.jsonl`` next to it.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .errors import DataError, FDAlignError

RecordKey = Tuple[str, str, str, int, int]

#: Encoder labels used in records and tables.
ENCODER_CLIP = "clip"
ENCODER_FDALIGN = "fdalign"
ENCODER_FINETUNE = "finetune"
ENCODERS = (ENCODER_CLIP, ENCODER_FDALIGN, ENCODER_FINETUNE)


def software_versions() -> Dict[str, str]:
    """The ``versions`` field of a record: this package, torch, open_clip and Python."""
    import open_clip
    import torch

    from . import __version__

    return {"fdalign_plugins": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def record_key(rec: Dict[str, Any]) -> RecordKey:
    """The identity of a record: (dataset, adapter, encoder, shots, seed)."""
    return (rec["dataset"], rec["adapter"], rec["encoder"], int(rec["shots"]), int(rec["seed"]))


def _parse(path: Path) -> Tuple[List[Dict[str, Any]], int]:
    """Whole records of a file and the byte length of its valid prefix."""
    data = path.read_bytes()
    records: List[Dict[str, Any]] = []
    good = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # a torn last line (no newline): drop it
        line = data[pos:nl]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if data.find(b"\n", nl + 1) >= 0 or data[nl + 1:].strip():
                    raise DataError(f"{path}: line {len(records) + 1} is not valid JSON; the results file is damaged")
                break
        pos = nl + 1
        good = pos
    return records, good


def _warn_dropped(path: Path, records: List[Dict[str, Any]], good: int, action: str) -> None:
    """Say that the bytes after ``good`` (a torn or garbled last line) were dropped."""
    size = path.stat().st_size
    tail = path.read_bytes()[good:]
    if size > good and tail.strip():
        warnings.warn(
            f"{path}: the last line ({size - good} bytes after record {len(records)}) is incomplete or not valid JSON, "
            f"left by an interrupted write; it was {action} — its record, if any, is computed again on the next run",
            stacklevel=3,
        )


def timings_path(results_path: Path) -> Path:
    """``timings.jsonl`` (``timings-shard<i>of<n>.jsonl``) next to a results file."""
    return results_path.with_name(results_path.name.replace("results", "timings", 1))


def read_results(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> List[Dict[str, Any]]:
    """Records of results files or run folders (all ``results*.jsonl`` in a folder, i.e.
    every shard), merged; the last copy of each key wins, except that an error record
    never replaces a finished one."""
    return [rec for rec, _ in read_results_located(paths)]


def read_results_located(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> List[Tuple[Dict[str, Any], Path]]:
    """Like :func:`read_results`, each record with the folder of its results file (where
    the paths it holds, e.g. its predictions file, are relative to)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: Dict[RecordKey, Tuple[Dict[str, Any], Path]] = {}
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("results*.jsonl")) if p.is_dir() else [p]
        if not files or not files[0].is_file():
            raise DataError(f"results file not found: {p if not p.is_dir() else p / 'results*.jsonl'}")
        for f in files:
            recs, good = _parse(f)
            _warn_dropped(f, recs, good, "ignored")
            for rec in recs:
                if record_key(rec) in merged and rec.get("error") and not merged[record_key(rec)][0].get("error"):
                    continue  # a failed retry never hides a finished record
                merged[record_key(rec)] = (rec, f.parent)
    return list(merged.values())


class ResultsFile:
    """An append-only ``results.jsonl`` with the keys already done."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: List[Dict[str, Any]] = []
        if self.path.is_file():
            self.records, good = _parse(self.path)
            _warn_dropped(self.path, self.records, good, "cut off")
            if good != self.path.stat().st_size:
                with open(self.path, "r+b") as fh:  # cut a torn tail left by a kill
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
        # records of a plugin that raised are kept for the report but retried on re-runs
        self.done = {record_key(r) for r in self.records if not r.get("error")}

    def __contains__(self, key: RecordKey) -> bool:
        return key in self.done

    def append(self, rec: Dict[str, Any], timing: Optional[Dict[str, Any]] = None) -> None:
        """Append one record durably; a key already present is not written twice.

        Args:
            rec: the record.
            timing: wall times and the clock of this record, appended to
                ``timings.jsonl`` (no fsync: losing one costs nothing).
        """
        key = record_key(rec)
        if key in self.done:
            return
        line = json.dumps(rec, sort_keys=True, allow_nan=True) + "\n"
        try:
            with open(self.path, "ab") as fh:
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            if timing is not None:
                with open(timings_path(self.path), "a") as fh:
                    fh.write(json.dumps({"key": list(key), **timing}, sort_keys=True) + "\n")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FDAlignError(
                    f"disk full while appending to {self.path} ({exc.strerror}); the records already written are "
                    "intact — free some space and re-run the same command to continue"
                ) from None
            raise
        self.records.append(rec)
        if not rec.get("error"):
            self.done.add(key)

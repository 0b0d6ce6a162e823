"""Saved test predictions: what a record's statistics are recomputed from, without a model.

Every benchmark record stores, per evaluation set, one row per test image:

* ``pred``  int32: the top-1 class (restricted to the set's label subset, ImageNet-A/R);
* ``label`` int32: the true class;
* ``conf``  float32: softmax probability of the top-1 class (calibration);
* ``p_true`` float32: softmax probability of the true class.

They are written as one safetensors file per record, gzip-compressed with a fixed
header (so the same predictions give the same bytes), under ``<run>/predictions/``;
the record holds the file's path relative to the results file and the SHA-256 of its
bytes, which every read checks. From them :mod:`fdalign_plugins.report` recomputes the
accuracy, expected calibration error, per-class accuracy and the paired bootstrap
intervals of :mod:`fdalign_plugins.stats`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .errors import DataError
from .ops import percent, top1_predictions

#: Folder (next to results.jsonl) holding the prediction files.
PREDICTIONS_DIR = "predictions"
FIELDS = ("pred", "label", "conf", "p_true")
#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15


def from_logits(logits: torch.Tensor, labels: Sequence[int],
                label_subset: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """The saved form of one evaluation set's predictions.

    Args:
        logits: ``[N, C]`` adapter output.
        labels: ``[N]`` true classes.
        label_subset: classes the prediction is restricted to (ImageNet-A/R's 200 of
            1000); softmax and argmax then run over those columns only.

    Returns:
        ``{"pred", "label", "conf", "p_true"}``, each ``[N]``.
    """
    logits = logits.detach().cpu().double()  # [N, C]
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if label_subset is not None:
        sub = torch.as_tensor(list(label_subset), dtype=torch.long)
        probs = torch.zeros_like(logits)
        probs[:, sub] = torch.softmax(logits[:, sub], dim=-1)
    else:
        probs = torch.softmax(logits, dim=-1)
    pred = top1_predictions(logits, label_subset)  # [N]
    conf = probs.gather(1, pred[:, None])[:, 0] if len(logits) else torch.zeros(0, dtype=logits.dtype)
    p_true = probs.gather(1, labels_t[:, None])[:, 0] if len(logits) else torch.zeros(0, dtype=logits.dtype)
    return {"pred": pred.numpy().astype(np.int32), "label": labels_t.numpy().astype(np.int32),
            "conf": conf.numpy().astype(np.float32), "p_true": p_true.numpy().astype(np.float32)}


def accuracy(p: Dict[str, np.ndarray]) -> float:
    """Top-1 % of one evaluation set's predictions (``nan`` for an empty set)."""
    n = len(p["label"])
    return percent(int(np.count_nonzero(p["pred"] == p["label"])), n)


def expected_calibration_error(p: Dict[str, np.ndarray], bins: int = ECE_BINS) -> float:
    """ECE in %: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over equal-width confidence bins
    (Guo et al., 2017, "On Calibration of Modern Neural Networks", eq. 3)."""
    n = len(p["label"])
    if not n:
        return float("nan")
    conf = p["conf"].astype(np.float64)
    correct = (p["pred"] == p["label"]).astype(np.float64)
    # bin b holds confidences in (b/B, (b+1)/B]; confidence 0 joins the first bin
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            gap += m.sum() / n * abs(correct[m].mean() - conf[m].mean())
    return 100.0 * float(gap)


def per_class_accuracy(p: Dict[str, np.ndarray]) -> Dict[int, float]:
    """Top-1 % per true class present in the set."""
    out = {}
    for c in np.unique(p["label"]).tolist():
        m = p["label"] == c
        out[int(c)] = percent(int(np.count_nonzero(p["pred"][m] == c)), int(m.sum()))
    return out


def file_name(key: Sequence) -> str:
    """A readable, unique file name for the predictions of record ``key``
    ``(dataset, adapter, encoder, shots, seed)``."""
    ds, adapter, enc, shots, seed = key
    tag = hashlib.sha256(repr(tuple(key)).encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{ds}-{adapter}-{enc}-{shots}shot-seed{seed}")
    return f"{safe}-{tag}.safetensors.gz"


def encode(preds: Dict[str, Dict[str, np.ndarray]]) -> bytes:
    """The compressed file bytes of ``{eval_set: predictions}`` (deterministic)."""
    from safetensors.numpy import save

    arrays = {f"{ev}/{k}": np.ascontiguousarray(v[k]) for ev, v in sorted(preds.items()) for k in FIELDS}
    # one metadata key: safetensors writes several in a random order, which would change the bytes
    raw = save(arrays, metadata={"format": "fdalign-predictions-v1"})
    return gzip.compress(raw, compresslevel=6, mtime=0)


def write(path: Path, preds: Dict[str, Dict[str, np.ndarray]]) -> str:
    """Write the predictions atomically; returns the SHA-256 of the file's bytes."""
    from .checkpoint import atomic_write_bytes

    data = encode(preds)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read(path: Path, sha256: str) -> Dict[str, Dict[str, np.ndarray]]:
    """Predictions written by :func:`write`, after checking their checksum.

    Raises:
        DataError: the file is missing, does not match ``sha256`` or cannot be decoded.
    """
    from safetensors.numpy import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"predictions file {path} cannot be read ({exc.strerror}); re-run the benchmark to "
                        "write it again") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"predictions file {path} does not match the checksum in its record (damaged or replaced); "
                        "delete it and its record and re-run the benchmark")
    try:
        arrays = load(gzip.decompress(data))
    except Exception as exc:  # checksum passed, so this is a writer bug, not damage
        raise DataError(f"predictions file {path} cannot be decoded ({type(exc).__name__}: {exc})") from None
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for name, arr in arrays.items():
        ev, _, field = name.rpartition("/")
        out.setdefault(ev, {})[field] = arr
    return out

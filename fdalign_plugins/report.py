"""Tables, CSV, JSON and plots rendered from result records and their saved predictions.

One table per (dataset, evaluation set): rows ``Adapter`` / ``Adapter + FD-Align`` (and
``Adapter + FT`` for plain fine-tuning, ``Adapter + <method>`` for every other
fine-tuning method), a ``Δ`` row against the stock encoder after each method's row, one
column per shot count; cells are the mean over seeds, with ``± std`` when several seeds
ran. A fine-tuned encoder that validation rejected (the stock encoder was kept) or whose
training collapsed marks its cells (:data:`MARKS`), explained by a legend line.

A Δ cell is the paired difference with its bootstrap interval
(:mod:`fdalign_plugins.stats`), marked ``*`` where the interval excludes 0. Nothing needs
a model: accuracies, ECE, per-class accuracy and intervals are recomputed from the
predictions each record saved (:mod:`fdalign_plugins.predictions`). Records whose
evaluation-set hashes differ are never paired.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import predictions as preds_io
from .errors import FDAlignError
from .stats import Interval, paired_interval

#: What each selection policy of a record means, for table headers.
SELECTION_MEANING = {"val": "few-shot validation split", "fixed": "nothing chosen",
                     "test": "TEST set (--protocol reference)", "unrecorded": "not recorded (older record)"}
ENCODER_SUFFIX = {"clip": "", "fdalign": " + FD-Align", "finetune": " + FT"}
#: The reference adapter's rows (zero-shot CLIP: :attr:`AdapterSpec.reference`) name the encoder.
REFERENCE_ROWS = {"clip": "CLIP (zero-shot)", "fdalign": "FD-Align", "finetune": "Full fine-tuning"}
ENCODER_ORDER = ["clip", "fdalign", "finetune"]
#: Cell marks of the fine-tuning verdicts (``finetune_verdict`` in the records), with their legend.
MARKS = {"rejected": "†", "collapsed": "‡"}
LEGEND = ("† validation rejected fine-tuning (no epoch beat the stock encoder, which was kept: Δ = 0 is not a result); "
          "‡ fine-tuning collapsed (validation far below the stock encoder, or class loss above log C); "
          "a number after the mark counts the seeds concerned")


class Shown(NamedTuple):
    """How tables show an adapter's records (from its :class:`~fdalign_plugins.specs.AdapterSpec`)."""

    label: str
    reference: bool
    order: int


def adapters_shown() -> Dict[str, Shown]:
    """Label, reference role and table order of every registered adapter, and of the
    episodic protocol's evaluator; an adapter no longer installed shows its name, last."""
    from .bench.episodic import EVALUATOR, EVALUATOR_LABEL
    from .plugins import list_adapters

    shown = {s.name: Shown(s.label, s.reference, s.order) for s in list_adapters()}
    shown.setdefault(EVALUATOR, Shown(EVALUATOR_LABEL, False, 1000))
    return shown


def _shown(adapter: str, shown: Optional[Dict[str, Shown]] = None) -> Shown:
    return (shown if shown is not None else adapters_shown()).get(adapter, Shown(adapter, False, 1000))


def row_label(adapter: str, encoder: str, shown: Optional[Dict[str, Shown]] = None) -> str:
    """``Tip-F + FD-Align``; the reference adapter's rows name the encoder (a method's name for other methods)."""
    s = _shown(adapter, shown)
    if s.reference:
        return REFERENCE_ROWS.get(encoder, encoder)
    return s.label + ENCODER_SUFFIX.get(encoder, f" + {encoder}")


def _stats(values: List[float]) -> Tuple[float, float, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


@dataclass
class DeltaCell:
    """One Δ cell: the paired difference ``encoder - clip`` of an adapter at one shot count.

    Attributes:
        delta: mean over paired seeds of the accuracy difference, in points.
        interval: the paired bootstrap interval (``None`` when a pair lacks predictions).
        n_seeds: seeds paired.
    """

    delta: float
    interval: Optional[Interval]
    n_seeds: int

    def text(self) -> str:
        if self.interval is None:
            return f"{self.delta:+.2f}"
        iv = self.interval
        return f"{self.delta:+.2f}{'*' if iv.excludes_zero else ''} [{iv.lo:+.2f}, {iv.hi:+.2f}]"


def _eval_hash(rec: Dict[str, Any], ev: str) -> Optional[str]:
    ident = rec.get("identity") or {}
    return ident.get("test") if ev == "test" else (ident.get("ood") or {}).get(ev)


class _Predictions:
    """Each record's saved predictions, read (and checksum-checked) once."""

    def __init__(self, notes: List[str]):
        self.notes = notes
        self._got: Dict[int, Optional[Dict[str, Any]]] = {}

    def get(self, rec: Dict[str, Any], where: Optional[Path]) -> Optional[Dict[str, Any]]:
        if id(rec) in self._got:
            return self._got[id(rec)]
        got = None
        p = rec.get("predictions")
        if p and where is not None:
            try:
                got = preds_io.read(Path(where) / p["file"], p["sha256"])
            except FDAlignError as exc:
                self.notes.append(f"{exc}; its cells use the accuracy stored in the record, without an interval")
        self._got[id(rec)] = got
        return got


def summarise(records: Iterable[Dict[str, Any]], where: Optional[Sequence[Optional[Path]]] = None
              ) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """Aggregate records into ``{(dataset, eval_set): table}``, recomputing every statistic
    from the records' saved predictions where they have them.

    Args:
        records: result records.
        where: for each record, the folder its paths (predictions) are relative to;
            ``None`` uses the accuracies stored in the records, without intervals.

    Each table: ``shots`` (sorted), ``rows`` (list of ``(label, adapter, encoder)``),
    ``cells[(adapter, encoder, shots)] = (mean, std, n_seeds)``, ``ece`` (same keys, mean
    ECE % over seeds), ``per_class`` (same keys, ``{class: mean top-1 %}``),
    ``deltas[(adapter, encoder, shots)] = DeltaCell`` against the ``clip`` row,
    ``failed``, ``marks`` (fine-tuning verdicts), ``selection`` and ``notes`` (pairs
    refused, predictions missing or damaged).
    """
    records = list(records)
    where = list(where) if where is not None else [None] * len(records)
    notes: List[str] = []
    loader = _Predictions(notes)
    # (ds, ev, adapter, encoder, shots) -> {seed: (acc, predictions of this set or None, record)}
    groups: Dict[Tuple[str, str, str, str, int], Dict[int, Tuple[float, Optional[Dict[str, Any]], Dict[str, Any]]]] = \
        defaultdict(dict)
    flags: Dict[Tuple[str, str, str, int], Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    evals: Dict[str, List[str]] = defaultdict(list)
    adapters: Dict[str, List[str]] = defaultdict(list)
    failed: Dict[Tuple[str, str, str, int], int] = defaultdict(int)  # (ds, adapter, encoder, shots) -> records
    selection: Dict[str, Dict[str, List[str]]] = defaultdict(dict)
    encoders: List[str] = list(ENCODER_ORDER)
    for r, w in zip(records, where):
        ds = r["dataset"]
        if r["adapter"] not in adapters[ds]:
            adapters[ds].append(r["adapter"])
        if r["encoder"] not in encoders:
            encoders.append(r["encoder"])
        if r.get("error") or not r.get("acc"):  # a plugin that raised: a marked cell, never a missing one
            failed[(ds, r["adapter"], r["encoder"], int(r["shots"]))] += 1
            continue
        policies = selection[ds].setdefault(r["adapter"], [])
        if r.get("selection", "unrecorded") not in policies:
            policies.append(r.get("selection", "unrecorded"))
        if r.get("finetune_verdict") in MARKS:  # the fine-tuning verdict of the encoder behind this value
            flags[(ds, r["adapter"], r["encoder"], int(r["shots"]))][r["finetune_verdict"]] += 1
        pr = loader.get(r, w)
        for ev, v in r["acc"].items():
            if ev not in evals[ds]:
                evals[ds].append(ev)
            p = pr.get(ev) if pr is not None else None
            acc = preds_io.accuracy(p) if p is not None else v
            groups[(ds, ev, r["adapter"], r["encoder"], int(r["shots"]))][int(r["seed"])] = (acc, p, r)
    shown = adapters_shown()
    tables: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for ds in {d for d, *_ in failed}:
        if not evals[ds]:
            evals[ds].append("test")  # every record of the dataset failed: still one table that says so
    for ds, ev_list in evals.items():
        ad_order = sorted(adapters[ds], key=lambda a: (not _shown(a, shown).reference, _shown(a, shown).order, a))
        for ev in sorted(ev_list, key=lambda e: e != "test"):
            cells: Dict[Tuple[str, str, int], Tuple[float, float, int]] = {}
            ece: Dict[Tuple[str, str, int], Tuple[float, float, int]] = {}
            per_class: Dict[Tuple[str, str, int], Dict[int, float]] = {}
            shots = set()
            present = set()
            for (d, e, a, enc, k), by_seed in groups.items():
                if d != ds or e != ev:
                    continue
                cells[(a, enc, k)] = _stats([v[0] for v in by_seed.values()])
                ps = [v[1] for v in by_seed.values() if v[1] is not None]
                if ps and len(ps) == len(by_seed):
                    ece[(a, enc, k)] = _stats([preds_io.expected_calibration_error(p) for p in ps])
                    per = [preds_io.per_class_accuracy(p) for p in ps]
                    per_class[(a, enc, k)] = {c: statistics.fmean(x[c] for x in per if c in x)
                                              for c in sorted(set().union(*per))}
                shots.add(k)
                present.add((a, enc))
            fails = {(a, enc, k): n for (d, a, enc, k), n in failed.items() if d == ds}
            for a, enc, k in fails:
                shots.add(k)
                present.add((a, enc))
            rows = [(row_label(a, enc, shown), a, enc) for a in ad_order for enc in encoders if (a, enc) in present]
            marks = {(a, enc, k): dict(f) for (d, a, enc, k), f in flags.items() if d == ds}
            deltas: Dict[Tuple[str, str, int], DeltaCell] = {}
            t_notes: List[str] = []
            for (a, enc, k) in list(cells):
                base = groups.get((ds, ev, a, "clip", k))
                if enc == "clip" or not base:
                    continue
                cell = _delta(base, groups[(ds, ev, a, enc, k)], ev, f"{row_label(a, enc, shown)} {k}-shot ({ev})",
                              t_notes)
                if cell is not None:
                    deltas[(a, enc, k)] = cell
            tables[(ds, ev)] = {"shots": sorted(shots), "rows": rows, "cells": cells, "failed": fails, "marks": marks,
                                "selection": {a: selection[ds][a] for a in ad_order if a in selection[ds]},
                                "ece": ece, "per_class": per_class, "deltas": deltas, "notes": t_notes}
    for t in tables.values():
        t["notes"] = notes + t["notes"]
    return tables


def _delta(base: Dict[int, Tuple[float, Any, Dict[str, Any]]], method: Dict[int, Tuple[float, Any, Dict[str, Any]]],
           ev: str, what: str, notes: List[str]) -> Optional[DeltaCell]:
    """The paired Δ of one cell (``{seed: (acc, predictions, record)}`` per encoder);
    pairs whose evaluation-set hashes differ are refused, with a note."""
    pairs = []
    for seed in sorted(set(base) & set(method)):
        hb, hm = _eval_hash(base[seed][2], ev), _eval_hash(method[seed][2], ev)
        if hb != hm:
            notes.append(f"{what} seed {seed}: not paired, the records' test-split hashes differ ({hb} vs {hm})")
            continue
        pairs.append((seed, base[seed], method[seed], hb))
    if not pairs:
        return None
    delta = statistics.fmean(m[0] - b[0] for _, b, m, _ in pairs)
    if any(b[1] is None or m[1] is None for _, b, m, _ in pairs):
        return DeltaCell(delta, None, len(pairs))
    if len({h for *_, h in pairs}) > 1 or any(not np.array_equal(b[1]["label"], pairs[0][1][1]["label"])
                                              or not np.array_equal(m[1]["label"], b[1]["label"])
                                              for _, b, m, _ in pairs):
        notes.append(f"{what}: seeds were evaluated on different test images; no interval")
        return DeltaCell(delta, None, len(pairs))
    cb = np.stack([b[1]["pred"] == b[1]["label"] for _, b, _, _ in pairs])  # [S, N]
    cm = np.stack([m[1]["pred"] == m[1]["label"] for _, _, m, _ in pairs])  # [S, N]
    return DeltaCell(delta, paired_interval(cb, cm), len(pairs))





#: The mark of a cell whose records failed (the adapter raised); see :data:`FAILED_NOTE`.
FAILED_MARK = "FAILED"
FAILED_NOTE = (f"{FAILED_MARK}: the adapter raised on every seed of that cell; (n failed): on n seeds. "
               "The error is in each record's \"error\" field of results.jsonl; re-running the command retries them.")


def _fmt(cell: Optional[Tuple[float, float, int]], failed: int = 0) -> str:
    if cell is None or cell[2] == 0:
        return FAILED_MARK if failed else "–"
    m, s, n = cell
    text = f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
    return f"{text} ({failed} failed)" if failed else text


def _failures_note(t: Dict[str, Any]) -> str:
    return FAILED_NOTE if t.get("failed") else ""


def _mark(t: Dict[str, Any], key: Tuple[str, str, int]) -> str:
    """The verdict marks of one cell: ``†`` / ``‡``, with the seed count when several seeds ran."""
    got = t.get("marks", {}).get(key, {})
    n_seeds = (t["cells"].get(key) or (0, 0, 0))[2]
    return "".join(f" {sym}{got[s] if n_seeds > 1 else ''}" for s, sym in MARKS.items() if got.get(s))


def _has_marks(t: Dict[str, Any]) -> bool:
    return any(t.get("marks", {}).get((a, enc, k)) for _, a, enc in t["rows"] for k in t["shots"])


#: What the cells mean, printed under the tables.
CELLS_LEGEND = ("cells: top-1 % mean ± std over seeds; Δ: paired difference with the same adapter on stock CLIP "
          "(same seed, support set and test images), mean over seeds [95 % bootstrap interval over test images "
          "and seeds]; * = the interval excludes 0; a Δ without an interval: a record without saved predictions "
          "(see the notes)")


def _notes(tables) -> List[str]:
    seen: List[str] = []
    for t in tables.values():
        for n in t.get("notes", []):
            if n not in seen:
                seen.append(n)
    return seen


def _table_rows(t: Dict[str, Any]) -> List[List[str]]:
    out = []
    present = {(x[1], x[2]) for x in t["rows"]}
    fails = t.get("failed", {})
    for label, a, enc in t["rows"]:
        out.append([label] + [_fmt(t["cells"].get((a, enc, k)), fails.get((a, enc, k), 0)) + _mark(t, (a, enc, k))
                              for k in t["shots"]])
        if enc not in ("clip", "finetune") and (a, "clip") in present:  # every method: Δ vs the stock encoder
            diff = [t["deltas"][(a, enc, k)].text() + _mark(t, (a, enc, k)) if (a, enc, k) in t["deltas"] else "–"
                    for k in t["shots"]]
            out.append([f"  Δ {'FD-Align' if enc == 'fdalign' else enc}"] + diff)
    return out


def _eval_title(ds: str, ev: str) -> str:
    return f"{ds} — in-distribution test" if ev == "test" else f"{ds} — OOD: {ev}"


def selection_line(t: Dict[str, Any]) -> str:
    """The table's header line saying how each adapter's hyper-parameters were chosen,
    e.g. ``selection: Zero-shot fixed · Tip val · CLAP fixed``; a TEST policy is flagged."""
    parts = [f"{_shown(a).label} {'/'.join(p).replace('test', 'TEST')}"
             for a, p in t.get("selection", {}).items()]
    flag = "  !! chosen on the TEST set" if any("test" in p for p in t.get("selection", {}).values()) else ""
    return ("selection: " + " · ".join(parts) + flag) if parts else ""


def render_text(tables, header: str = "") -> str:
    """Aligned plain-text tables for the terminal."""
    parts = [header] if header else []
    for (ds, ev), t in tables.items():
        head = ["top-1 %"] + [f"{k}-shot" for k in t["shots"]]
        rows = _table_rows(t)
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = [_eval_title(ds, ev)] + ([selection_line(t)] if selection_line(t) else [])
        lines.append("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head)))
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if _failures_note(t):
            lines.append(_failures_note(t))
        if _has_marks(t):
            lines.append(LEGEND)
        parts.append("\n".join(lines))
    if tables:
        parts.append(CELLS_LEGEND + "".join(f"\n! {n}" for n in _notes(tables)))
    return "\n\n".join(parts) + "\n"


def render_markdown(tables, header: str = "") -> str:
    """The same tables as Markdown."""
    parts = [header] if header else []
    for (ds, ev), t in tables.items():
        head = ["top-1 %"] + [f"{k}-shot" for k in t["shots"]]
        lines = [f"### {_eval_title(ds, ev)}", ""] + ([selection_line(t), ""] if selection_line(t) else []) + [
                 "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(t["shots"])) + "|"]
        for r in _table_rows(t):
            lines.append("| " + " | ".join(c.strip() for c in r) + " |")
        if _failures_note(t):
            lines += ["", _failures_note(t)]
        if _has_marks(t):
            lines += ["", LEGEND]
        parts.append("\n".join(lines))
    if tables:
        parts.append(CELLS_LEGEND.replace("*", "\\*") + "".join(f"  \n**!** {n}" for n in _notes(tables)))
    return "\n\n".join(parts) + "\n"


def render_csv(tables) -> str:
    """Long-format CSV: one row per (dataset, eval set, method, shots)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "eval_set", "method", "adapter", "encoder", "shots", "mean", "std", "n_seeds", "n_failed",
                "selection", "rejected", "collapsed", "ece", "delta", "delta_lo", "delta_hi", "delta_excludes_0",
                "delta_n_seeds"])
    for (ds, ev), t in tables.items():
        for label, a, enc in t["rows"]:
            for k in t["shots"]:
                c = t["cells"].get((a, enc, k))
                nf = t.get("failed", {}).get((a, enc, k), 0)
                policy = "/".join(t.get("selection", {}).get(a, []))
                f = t.get("marks", {}).get((a, enc, k), {})
                verdicts = [f.get("rejected", 0), f.get("collapsed", 0)]
                e = t["ece"].get((a, enc, k))
                d = t["deltas"].get((a, enc, k))
                iv = d.interval if d is not None else None
                stats = [f"{e[0]:.4f}" if e else "", f"{d.delta:.4f}" if d else "", f"{iv.lo:.4f}" if iv else "",
                         f"{iv.hi:.4f}" if iv else "", ("yes" if iv.excludes_zero else "no") if iv else "",
                         d.n_seeds if d else ""]
                if c and c[2]:
                    w.writerow([ds, ev, label, a, enc, k, f"{c[0]:.4f}", f"{c[1]:.4f}", c[2], nf, policy] + verdicts
                               + stats)
                elif nf:
                    w.writerow([ds, ev, label, a, enc, k, "", "", 0, nf, policy] + verdicts + [""] * 6)
    return buf.getvalue()


def render_json(tables, header: str = "") -> str:
    """Everything the tables hold, with ECE, per-class accuracy and the interval bounds."""
    def num(x: float) -> Optional[float]:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)

    out = {"header": header, "legend": CELLS_LEGEND, "marks_legend": LEGEND, "notes": _notes(tables), "tables": []}
    for (ds, ev), t in tables.items():
        rows = []
        for label, a, enc in t["rows"]:
            cells = {}
            for k in t["shots"]:
                c = t["cells"].get((a, enc, k))
                nf = t["failed"].get((a, enc, k), 0)
                if not (c and c[2]):
                    if nf:
                        cells[str(k)] = {"mean": None, "std": None, "n_seeds": 0, "n_failed": nf}
                    continue
                cell: Dict[str, Any] = {"mean": num(c[0]), "std": num(c[1]), "n_seeds": c[2], "n_failed": nf}
                if t["marks"].get((a, enc, k)):  # fine-tuning verdicts: {"rejected": n seeds, "collapsed": n}
                    cell["verdicts"] = dict(t["marks"][(a, enc, k)])
                if (a, enc, k) in t["ece"]:
                    cell["ece"] = num(t["ece"][(a, enc, k)][0])
                    cell["per_class"] = {str(cl): num(v) for cl, v in t["per_class"][(a, enc, k)].items()}
                d = t["deltas"].get((a, enc, k))
                if d is not None:
                    iv = d.interval
                    cell["delta"] = {"mean": num(d.delta), "n_seeds": d.n_seeds,
                                     "lo": num(iv.lo) if iv else None, "hi": num(iv.hi) if iv else None,
                                     "excludes_0": iv.excludes_zero if iv else None}
                cells[str(k)] = cell
            rows.append({"label": label, "adapter": a, "encoder": enc, "cells": cells})
        out["tables"].append({"dataset": ds, "eval_set": ev, "shots": t["shots"], "rows": rows})
    return json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n"





def render_plot(tables, path: Path, title: str = "") -> Optional[Path]:
    """Accuracy vs shots, one panel per evaluation set, above each Δ vs shots; ``None``
    without matplotlib.

    Top row: accuracy, band ± std over seeds. Bottom row: each Δ (paired difference
    with the stock-CLIP row), band its 95 % bootstrap interval. The accuracy panels
    share one y range and one legend (below them); the line style says the
    encoder (dashed stock CLIP, solid FD-Align, dotted plain fine-tuning), the colour the
    adapter; curves of different adapters are dodged sideways a little so equal values do
    not hide each other. ``title`` (model, seeds) heads the figure.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    items = list(tables.items())
    if not items:
        return None
    fig, axes = plt.subplots(2, len(items), figsize=(4.2 * len(items), 6.6), squeeze=False, sharey="row",
                             gridspec_kw={"height_ratios": [3, 2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"clip": ("--", "o"), "fdalign": ("-", "s"), "finetune": (":", "^")}
    handles: Dict[str, Any] = {}
    for col, ((ds, ev), t) in enumerate(items):
        ax, dax = axes[0][col], axes[1][col]
        adapters = []
        for _, a, _ in t["rows"]:
            if a not in adapters:
                adapters.append(a)
        encs = list(dict.fromkeys(enc for _, _, enc in t["rows"]))
        for i, a in enumerate(adapters):
            dodge = 2 ** (0.04 * (i - (len(adapters) - 1) / 2))  # multiplicative: the x axis is log2
            for enc, (style, marker) in ((e, styles.get(e, ("-.", "d"))) for e in encs):
                ks = [k for k in t["shots"] if (a, enc, k) in t["cells"] and t["cells"][(a, enc, k)][2]]
                if not ks:
                    continue
                colour = colours[i % len(colours)]
                x = np.array(ks, dtype=float) * dodge
                m = np.array([t["cells"][(a, enc, k)][0] for k in ks])
                sd = np.array([t["cells"][(a, enc, k)][1] for k in ks])
                label = row_label(a, enc)
                (line,) = ax.plot(x, m, style, marker=marker, ms=4, lw=1.4, alpha=0.85, color=colour, label=label)
                handles.setdefault(label, line)
                ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.10, lw=0)
                dk = [k for k in ks if (a, enc, k) in t["deltas"]]
                if enc != "clip" and dk:
                    cells = [t["deltas"][(a, enc, k)] for k in dk]
                    dax.plot(np.array(dk, dtype=float) * dodge, [c.delta for c in cells], style, marker=marker, ms=4,
                             lw=1.4, alpha=0.85, color=colour)
                    with_iv = [(k * dodge, c.interval) for k, c in zip(dk, cells) if c.interval is not None]
                    if with_iv:
                        dax.fill_between([k for k, _ in with_iv], [iv.lo for _, iv in with_iv],
                                         [iv.hi for _, iv in with_iv], color=colour, alpha=0.15, lw=0)
        for a_ in (ax, dax):
            a_.set_xscale("log", base=2)
            a_.set_xticks(t["shots"])
            a_.set_xticklabels([str(k) for k in t["shots"]])
            a_.minorticks_off()
            a_.grid(alpha=0.3)
        dax.axhline(0.0, color="k", lw=0.8)
        dax.set_xlabel("shots per class")
        ax.set_title(_eval_title(ds, ev), fontsize=9)
    axes[0][0].set_ylabel("top-1 % (band: ± std over seeds)")
    axes[1][0].set_ylabel("Δ vs stock CLIP (band: 95 % CI)")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)), fontsize=8,
                   frameon=False)
    legend_rows = -(-len(handles) // 5)
    fig.suptitle((title + "\n" if title else "") + "dashed: stock CLIP encoder · solid: FD-Align encoder"
                 + (" · dotted: plain fine-tuning" if any(e == "finetune" for t in tables.values()
                                                          for _, _, e in t["rows"]) else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.03 * legend_rows + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_title(records: Sequence[Dict[str, Any]]) -> str:
    """``model ...; mean over N seed(s) (s1, s2)`` for the plot's heading."""
    models = sorted({str(r["encoder_source"]) for r in records
                     if r.get("encoder") == "clip" and r.get("encoder_source")})
    seeds = sorted({int(r["seed"]) for r in records})
    return (f"model {', '.join(models) or '?'}; mean over {len(seeds)} seed(s)"
            + (f" ({', '.join(map(str, seeds))})" if seeds else ""))


def write_reports(records: Sequence[Dict[str, Any]], out: Path, header: str = "",
                  where: Optional[Sequence[Optional[Path]]] = None) -> Dict[str, Any]:
    """Write table.md, table.csv, table.json and plot.png into ``out``; return the text
    table, the paths and the tables.

    Args:
        records: result records.
        out: folder for the files.
        header: first line(s) of the text and Markdown tables.
        where: per record, the folder its predictions path is relative to (see
            :func:`fdalign_plugins.results.read_results_located`).
    """
    from .checkpoint import atomic_write_bytes

    tables = summarise(records, where)
    text = render_text(tables, header)
    atomic_write_bytes(out / "table.md", render_markdown(tables, header).encode())
    atomic_write_bytes(out / "table.csv", render_csv(tables).encode())
    atomic_write_bytes(out / "table.json", render_json(tables, header).encode())
    plot = render_plot(tables, out / "plot.png", title=plot_title(records))
    return {"text": text, "markdown": out / "table.md", "csv": out / "table.csv", "json": out / "table.json",
            "plot": plot, "tables": tables, "notes": _notes(tables)}

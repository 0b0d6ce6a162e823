"""Tables and plots rendered from result records (never recomputed).

One table per (dataset, evaluation set): rows ``Adapter`` / ``Adapter + FD-Align`` (and
``Adapter + FT`` for plain fine-tuning, ``Adapter + <method>`` for every other
fine-tuning method), a ``Δ`` row against the stock encoder after each method's row, one
column per shot count; cells are the mean over seeds, with ``± std`` when several seeds
ran. A fine-tuned encoder that validation rejected (the stock encoder was kept) or whose
training collapsed marks its cells (:data:`MARKS`), explained by a legend line.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ADAPTER_LABELS = {"zero-shot": "Zero-shot", "tip": "Tip", "tip-f": "Tip-F", "ape": "APE", "ape-t": "APE-T",
                  "gda": "GDA", "lp++": "LP++", "clap": "CLAP", "clip-adapter": "CLIP-Adapter",
                  "linear-probe": "Linear probe", "protonet": "Cosine prototypes"}
#: What each selection policy of a record means, for table headers.
SELECTION_MEANING = {"val": "few-shot validation split", "fixed": "nothing chosen",
                     "test": "TEST set (--protocol reference)", "unrecorded": "not recorded (older record)"}
ENCODER_SUFFIX = {"clip": "", "fdalign": " + FD-Align", "finetune": " + FT"}
ZERO_SHOT_ROWS = {"clip": "CLIP (zero-shot)", "fdalign": "FD-Align", "finetune": "Full fine-tuning"}
ENCODER_ORDER = ["clip", "fdalign", "finetune"]
#: Cell marks of the fine-tuning verdicts (``finetune_verdict`` in the records), with their legend.
MARKS = {"rejected": "†", "collapsed": "‡"}
LEGEND = ("† validation rejected fine-tuning (no epoch beat the stock encoder, which was kept: Δ = 0 is not a result); "
          "‡ fine-tuning collapsed (validation far below the stock encoder, or class loss above log C); "
          "a number after the mark counts the seeds concerned")


def row_label(adapter: str, encoder: str) -> str:
    """``Tip-F + FD-Align``; the zero-shot rows name the encoder (a method's name for other methods)."""
    if adapter == "zero-shot":
        return ZERO_SHOT_ROWS.get(encoder, encoder)
    return ADAPTER_LABELS.get(adapter, adapter) + ENCODER_SUFFIX.get(encoder, f" + {encoder}")


def _stats(values: List[float]) -> Tuple[float, float, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def summarise(records: Iterable[Dict[str, Any]]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """Aggregate records into ``{(dataset, eval_set): table}``.

    Each table: ``shots`` (sorted), ``rows`` (list of ``(label, adapter, encoder)``) and
    ``cells[(adapter, encoder, shots)] = (mean, std, n_seeds)``.
    """
    groups: Dict[Tuple[str, str, str, str, int], List[float]] = defaultdict(list)
    flags: Dict[Tuple[str, str, str, int], Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    evals: Dict[str, List[str]] = defaultdict(list)
    adapters: Dict[str, List[str]] = defaultdict(list)
    failed: Dict[Tuple[str, str, str, int], int] = defaultdict(int)  # (ds, adapter, encoder, shots) -> records
    selection: Dict[str, Dict[str, List[str]]] = defaultdict(dict)
    encoders: List[str] = list(ENCODER_ORDER)
    for r in records:
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
        for ev, v in r["acc"].items():
            if ev not in evals[ds]:
                evals[ds].append(ev)
            groups[(ds, ev, r["adapter"], r["encoder"], int(r["shots"]))].append(v)
    tables: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for ds in {d for d, *_ in failed}:
        if not evals[ds]:
            evals[ds].append("test")  # every record of the dataset failed: still one table that says so
    for ds, ev_list in evals.items():
        ad_order = sorted(adapters[ds], key=lambda a: (a != "zero-shot", list(ADAPTER_LABELS).index(a)
                                                       if a in ADAPTER_LABELS else 99, a))
        for ev in sorted(ev_list, key=lambda e: e != "test"):
            cells = {}
            shots = set()
            present = set()
            for (d, e, a, enc, k), vals in groups.items():
                if d == ds and e == ev:
                    cells[(a, enc, k)] = _stats(vals)
                    shots.add(k)
                    present.add((a, enc))
            fails = {(a, enc, k): n for (d, a, enc, k), n in failed.items() if d == ds}
            for a, enc, k in fails:
                shots.add(k)
                present.add((a, enc))
            rows = [(row_label(a, enc), a, enc) for a in ad_order for enc in encoders if (a, enc) in present]
            marks = {(a, enc, k): dict(f) for (d, a, enc, k), f in flags.items() if d == ds}
            tables[(ds, ev)] = {"shots": sorted(shots), "rows": rows, "cells": cells, "failed": fails, "marks": marks,
                                "selection": {a: selection[ds][a] for a in ad_order if a in selection[ds]}}
    return tables


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


def _table_rows(t: Dict[str, Any]) -> List[List[str]]:
    out = []
    present = {(x[1], x[2]) for x in t["rows"]}
    fails = t.get("failed", {})
    for label, a, enc in t["rows"]:
        out.append([label] + [_fmt(t["cells"].get((a, enc, k)), fails.get((a, enc, k), 0)) + _mark(t, (a, enc, k))
                              for k in t["shots"]])
        if enc not in ("clip", "finetune") and (a, "clip") in present:  # every method: Δ vs the stock encoder
            diff = []
            for k in t["shots"]:
                b, f = t["cells"].get((a, "clip", k)), t["cells"].get((a, enc, k))
                diff.append(f"{f[0] - b[0]:+.2f}{_mark(t, (a, enc, k))}" if b and f and b[2] and f[2] else "–")
            out.append([f"  Δ {'FD-Align' if enc == 'fdalign' else enc}"] + diff)
    return out


def _eval_title(ds: str, ev: str) -> str:
    return f"{ds} — in-distribution test" if ev == "test" else f"{ds} — OOD: {ev}"


def selection_line(t: Dict[str, Any]) -> str:
    """The table's header line saying how each adapter's hyper-parameters were chosen,
    e.g. ``selection: Zero-shot fixed · Tip val · CLAP fixed``; a TEST policy is flagged."""
    parts = [f"{ADAPTER_LABELS.get(a, a)} {'/'.join(p).replace('test', 'TEST')}" for a, p in t.get("selection", {}).items()]
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
    return "\n\n".join(parts) + "\n"


def render_csv(tables) -> str:
    """Long-format CSV: one row per (dataset, eval set, method, shots)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "eval_set", "method", "adapter", "encoder", "shots", "mean", "std", "n_seeds", "n_failed",
                "selection", "rejected", "collapsed"])
    for (ds, ev), t in tables.items():
        for label, a, enc in t["rows"]:
            for k in t["shots"]:
                c = t["cells"].get((a, enc, k))
                nf = t.get("failed", {}).get((a, enc, k), 0)
                policy = "/".join(t.get("selection", {}).get(a, []))
                f = t.get("marks", {}).get((a, enc, k), {})
                verdicts = [f.get("rejected", 0), f.get("collapsed", 0)]
                if c and c[2]:
                    w.writerow([ds, ev, label, a, enc, k, f"{c[0]:.4f}", f"{c[1]:.4f}", c[2], nf, policy] + verdicts)
                elif nf:
                    w.writerow([ds, ev, label, a, enc, k, "", "", 0, nf, policy] + verdicts)
    return buf.getvalue()


def render_plot(tables, path: Path, title: str = "") -> Optional[Path]:
    """Accuracy vs shots, one panel per evaluation set; ``None`` without matplotlib.

    All panels share one y range and one legend (below them); the line style says the
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
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4.2), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"clip": ("--", "o"), "fdalign": ("-", "s"), "finetune": (":", "^")}
    handles: Dict[str, Any] = {}
    for ax, ((ds, ev), t) in zip(axes[0], items):
        adapters = []
        for _, a, _ in t["rows"]:
            if a not in adapters:
                adapters.append(a)
        encs = list(dict.fromkeys(enc for _, _, enc in t["rows"]))
        for i, a in enumerate(adapters):
            dodge = 2 ** (0.04 * (i - (len(adapters) - 1) / 2))  # multiplicative: the x axis is log2
            for enc, (style, marker) in ((e, styles.get(e, ("-.", "d"))) for e in encs):
                pts = [(k * dodge, t["cells"][(a, enc, k)][0]) for k in t["shots"]
                       if (a, enc, k) in t["cells"] and t["cells"][(a, enc, k)][2]]
                if pts:
                    label = row_label(a, enc)
                    (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, ms=4, lw=1.4,
                                      alpha=0.85, color=colours[i % len(colours)], label=label)
                    handles.setdefault(label, line)
        ax.set_xscale("log", base=2)
        ax.set_xticks(t["shots"])
        ax.set_xticklabels([str(k) for k in t["shots"]])
        ax.minorticks_off()
        ax.set_xlabel("shots per class")
        ax.set_title(_eval_title(ds, ev), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 %")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)), fontsize=8,
                   frameon=False)
    legend_rows = -(-len(handles) // 5)
    fig.suptitle((title + "\n" if title else "") + "dashed: stock CLIP encoder · solid: FD-Align encoder"
                 + (" · dotted: plain fine-tuning" if any(e == "finetune" for t in tables.values()
                                                          for _, _, e in t["rows"]) else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.045 * legend_rows + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_title(records: Sequence[Dict[str, Any]]) -> str:
    """``model ...; mean over N seed(s) (s1, s2)`` for the plot's heading."""
    models = sorted({str(r["encoder_source"]) for r in records if r.get("encoder") == "clip" and r.get("encoder_source")})
    seeds = sorted({int(r["seed"]) for r in records})
    return (f"model {', '.join(models) or '?'}; mean over {len(seeds)} seed(s)"
            + (f" ({', '.join(map(str, seeds))})" if seeds else ""))


def write_reports(records: Sequence[Dict[str, Any]], out: Path, header: str = "") -> Dict[str, Any]:
    """Write table.md, table.csv and plot.png into ``out``; return the text table and paths."""
    from .checkpoint import atomic_write_bytes

    tables = summarise(records)
    text = render_text(tables, header)
    atomic_write_bytes(out / "table.md", render_markdown(tables, header).encode())
    atomic_write_bytes(out / "table.csv", render_csv(tables).encode())
    plot = render_plot(tables, out / "plot.png", title=plot_title(records))
    return {"text": text, "markdown": out / "table.md", "csv": out / "table.csv", "plot": plot, "tables": tables}

"""The plot: one legend for all panels, one y range, a title naming model and seeds."""

import pytest

from fdalign_plugins.report import plot_title, render_plot, summarise

matplotlib = pytest.importorskip("matplotlib")


def _records():
    recs = []
    for ev_shift, (a, enc) in enumerate([("zero-shot", "clip"), ("tip", "clip"), ("tip", "fdalign")]):
        for k in (1, 2, 4):
            for seed in (1, 2):
                recs.append({"dataset": "world", "adapter": a, "encoder": enc, "shots": k, "seed": seed,
                             "encoder_source": "ViT-B-32/openai" if enc == "clip" else "fine-tuned",
                             "acc": {"test": 50.0 + k + ev_shift, "sketch": 20.0 + k}})
    return recs


def test_plot_has_one_shared_legend_one_y_range_and_a_title(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    recs = _records()
    path = render_plot(summarise(recs), tmp_path / "plot.png", title=plot_title(recs))
    assert path.stat().st_size > 1000
    fig = kept[0]
    axes = fig.axes
    # top row: accuracy per evaluation set; bottom row: the Δ under each
    assert len(axes) == 4 and axes[0].get_ylim() == axes[1].get_ylim()  # the sketch panel is on the same scale
    assert [ax.get_title() for ax in axes[:2]] == ["world — in-distribution test", "world — OOD: sketch"]
    assert [line.get_label() for line in axes[2].get_lines()][0].startswith("_")  # Δ lines stay out of the legend
    assert [tuple(line.get_ydata()) for line in axes[3].get_lines()][0] == (0.0, 0.0, 0.0)  # Tip + FD-Align - Tip
    assert all(len(ax.collections) >= 1 for ax in axes[:2])  # ± std bands
    assert not axes[2].collections  # records without saved predictions: a Δ line, no interval band
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["CLIP (zero-shot)", "Tip", "Tip + FD-Align"]
    title = fig._suptitle.get_text()
    assert "model ViT-B-32/openai; mean over 2 seed(s) (1, 2)" in title
    assert "dashed: stock CLIP encoder" in title and "solid: FD-Align encoder" in title
    # curves of different adapters with equal values do not sit on top of each other
    xs = {line.get_label(): tuple(line.get_xdata()) for line in axes[1].get_lines()}
    assert xs["CLIP (zero-shot)"] != xs["Tip"]

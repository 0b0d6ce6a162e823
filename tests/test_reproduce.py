"""Paper reproduction: a table config runs end to end on a tiny ImageNet tree with the
tiny model and prints ours, published and the difference side by side."""

import re

import pytest
import yaml

from fdalign_plugins.cli.bench import main as bench_main
from fdalign_plugins.errors import ConfigError
from fdalign_plugins.reproduce import find_table, list_tables, load_table

TINY = {
    "views": 1,
    "finetune": {"epochs": 1, "batch_size": 8, "spc": False, "templates": ["a photo of a {}."]},
    "adapter_params": {"tip-f": {"epochs": 1}, "ape-t": {"epochs": 1}},
}


def test_every_published_table_has_a_valid_config():
    names = list_tables()
    assert {"ood-imagenet", "imagenet-adapters", "spc-ablation", "adapters-rn50", "nway-kshot"} <= set(names)
    for n in names:
        spec = load_table(find_table(n))
        assert spec["published"] and set(spec["published"]) <= set(spec["rows"])
    ood = load_table(find_table("ood-imagenet"))
    assert ood["published"]["Tip-F + FD-Align"]["ImageNet-V2"][16] == 60.17
    assert ood["runs"]["main"]["finetune"]["lr"] == 0.00005


def test_unknown_table_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown table 'ood'; valid: .*ood-imagenet"):
        find_table("ood")


def test_reproduce_ood_table_side_by_side(tmp_path, tiny_model_name, capsys):
    from test_datasets import make_imagenet

    make_imagenet(tmp_path / "data", per_class=20)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "model": tiny_model_name, "pretrained": "none"}))
    out = tmp_path / "rep"
    rc = bench_main(["--reproduce", "ood-imagenet", "--data-root", str(tmp_path / "data"), "--config", str(cfg),
                     "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.startswith("Reproduction: FD-Align OOD table")
    for group in ("[ImageNet]", "[ImageNet-Sketch]", "[ImageNet-V2]"):
        assert group in text
    # every row shows ours / published (difference)
    for label, pub in (("CLIP", "63.34"), ("FT", "64.91"), ("APE-T + FD-Align", "69.15")):
        line = [ln for ln in text.splitlines() if ln.startswith(label + " ")][0]
        m = re.search(r"(\d+\.\d\d) / " + re.escape(pub) + r" \(([+-]\d+\.\d\d)\)", line)
        assert m, line
        assert float(m.group(2)) == pytest.approx(float(m.group(1)) - float(pub), abs=0.011)
    assert "fdalign-test-tiny/none" in text
    assert (out / "reproduce.md").read_text().count("| Tip + FD-Align |") == 3
    # a second invocation resumes: nothing recomputed, same table
    rc = bench_main(["--reproduce", "ood-imagenet", "--data-root", str(tmp_path / "data"), "--config", str(cfg),
                     "--out", str(out), "--quiet"])
    assert rc == 0 and capsys.readouterr().out == text


def test_reproduce_reference_protocol_says_so(tmp_path, tiny_model_name, capsys):
    from test_datasets import make_imagenet

    make_imagenet(tmp_path / "data", per_class=6, ood=False)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "model": tiny_model_name, "pretrained": "none", "shots": [2],
                                   "adapters": ["tip"], "ood": []}))
    rc = bench_main(["--reproduce", "imagenet-adapters", "--data-root", str(tmp_path / "data"), "--config", str(cfg),
                     "--protocol", "reference", "--out", str(tmp_path / "r"), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and text.startswith("!! REFERENCE PROTOCOL")
    assert "REFERENCE PROTOCOL" in (tmp_path / "r" / "reproduce.md").read_text()


def test_episodic_protocol_end_to_end(tmp_path, tiny_model_name, capsys):
    """miniImageNet (folder layout) + one cross-domain set, 3-way 1/2-shot episodes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def img(p, c):
        p.parent.mkdir(parents=True, exist_ok=True)
        a = np.full((16, 16, 3), 25 * c, dtype=np.uint8) + rng.integers(0, 30, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(a).save(p)

    root = tmp_path / "data"
    for split, classes in (("train", range(4)), ("val", range(4, 7)), ("test", range(7, 10))):
        for c in classes:
            for j in range(6):
                img(root / "miniimagenet" / split / f"n{c:08d}" / f"{j}.png", c)
    for c in range(3):
        for j in range(6):
            img(root / "meta-dataset" / "CUB_200_2011" / "images" / f"{c:03d}.bird_{c}" / f"{j}.png", c)
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": tiny_model_name, "pretrained": "none", "shots": [1, 2],
        "finetune": {"epochs": 2, "spc": False, "templates": ["a photo of a {}."]},
        "episodic": {"n_way": 3, "query": 2, "episodes": 20, "repeats": 3, "train_shot": 2, "train_query": 2,
                     "train_episodes": 3, "val_episodes": 5, "eval_sets": ["episodic_folder:cub"]},
    }))
    out = tmp_path / "rep"
    rc = bench_main(["--reproduce", "nway-kshot", "--data-root", str(root), "--config", str(cfg), "--out", str(out),
                     "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "[miniImageNet]" in text and "[CUB]" in text
    fd_line = [ln for ln in text.splitlines() if ln.startswith("FD-Align ")][0]
    assert re.search(r"\d+\.\d\d±\d+\.\d\d / 95\.04 \([+-]", fd_line)
    from fdalign_plugins.results import read_results

    recs = read_results(out / "main")
    assert len(recs) == 4  # (clip, fdalign) x (1, 2)-shot
    for r in recs:
        assert set(r["acc"]) == {"test", "episodic_folder:cub"} and set(r["ci95"]) == set(r["acc"])
        assert all(0 <= v <= 100 for v in r["acc"].values())

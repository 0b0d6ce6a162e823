"""Dataset layouts, split-file validation, sampling and episodes on tiny generated trees."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from fdalign_plugins.datasets import check_images, few_shot_split, load_dataset  # noqa: E402
from fdalign_plugins.datasets.base import FileSplit, SubsetSplit  # noqa: E402
from fdalign_plugins.datasets.classnames import (  # noqa: E402
    IMAGENET_A_WNIDS,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
    imagenet_wnid_index,
)
from fdalign_plugins.datasets.coop import COOP_LAYOUTS  # noqa: E402
from fdalign_plugins.datasets.episodic import (  # noqa: E402
    CROSS_DOMAIN_SETS,
    EpisodeSampler,
    episode_labels,
    sample_episode,
)
from fdalign_plugins.datasets.imagenet import OOD_LAYOUTS  # noqa: E402
from fdalign_plugins.datasets.splitjson import drop_unreadable  # noqa: E402
from fdalign_plugins.errors import ConfigError, DataError  # noqa: E402
from fdalign_plugins.plugins import get_dataset_spec  # noqa: E402
from fdalign_plugins.prompts import COOP_TEMPLATES, IMAGENET_TEMPLATES  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def png(path: Path, value: int = 0) -> None:
    """A tiny 8x8 image (PNG content whatever the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((8, 8, 3), value % 256, dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- CoOp split-file datasets

# dataset -> (raw class names in the split file, folder per class name or None for flat images)
COOP_CLASSES: Dict[str, Tuple[List[str], List[str]]] = {
    "caltech101": (["accordion", "airplane", "face"], ["accordion", "airplanes", "Faces"]),
    "oxford_pets": (["abyssinian", "american_bulldog", "beagle"], []),
    "stanford_cars": (["2012 Audi S4 Sedan", "2007 BMW X5 SUV", "2012 Tesla Model S Sedan"], []),
    "oxford_flowers": (["pink primrose", "globe thistle", "sunflower"], []),
    "food101": (["apple_pie", "baby_back_ribs", "waffles"], ["apple_pie", "baby_back_ribs", "waffles"]),
    "sun397": (["abbey", "outdoor apartment_building", "bakery shop"],
               ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop"]),
    "dtd": (["banded", "blotchy", "zigzagged"], ["banded", "blotchy", "zigzagged"]),
    "eurosat": (["Annual Crop Land", "Forest", "Sea or Lake"], ["AnnualCrop", "Forest", "SeaLake"]),
    "ucf101": (["Apply_Eye_Makeup", "Band_Marching", "Yo_Yo"], ["Apply_Eye_Makeup", "Band_Marching", "Yo_Yo"]),
}
PER_SPLIT = {"train": 3, "val": 2, "test": 2}


def make_coop(root: Path, name: str) -> Dict[str, List[Tuple[str, int, str]]]:
    """A CoOp tree for ``name`` under ``root``; returns the split written."""
    lay = COOP_LAYOUTS[name]
    base = root / lay.folder
    image_dir = base / lay.images if lay.images else base
    classes, folders = COOP_CLASSES[name]
    split: Dict[str, List[Tuple[str, int, str]]] = {}
    k = 0
    for s, n in PER_SPLIT.items():
        entries = []
        for label, cname in enumerate(classes):
            for i in range(n):
                k += 1
                if folders:
                    rel = f"{folders[label]}/{s}_{i}.jpg"
                elif name == "stanford_cars":
                    rel = f"cars_{'test' if s == 'test' else 'train'}/{k:05d}.jpg"
                else:
                    rel = f"img_{k:04d}.jpg"
                png(image_dir / rel, 40 * label + i)
                entries.append((rel, label, cname))
        split[s] = entries
    write_json(base / lay.split_file, split)
    return split


@pytest.mark.parametrize("name", sorted(COOP_CLASSES))
def test_coop_split_datasets_load(tmp_path, name):
    split = make_coop(tmp_path, name)
    ds = load_dataset(name, str(tmp_path))
    assert ds.name == name
    assert ds.templates == COOP_TEMPLATES[name]
    assert ds.classnames == [c.replace("_", " ") for c in COOP_CLASSES[name][0]]
    for s in ("train", "val", "test"):
        part = getattr(ds, s)
        assert len(part) == len(split[s])
        assert part.labels.tolist() == [lbl for _, lbl, _ in split[s]]
    assert ds.train.load(0).size == (8, 8)
    assert ds.test.describe(0).endswith(split["test"][0][0])


def test_eurosat_uses_coop_renamed_classnames(tmp_path):
    make_coop(tmp_path, "eurosat")
    ds = load_dataset("eurosat", str(tmp_path))
    assert ds.classnames[0] == "Annual Crop Land"


def make_aircraft(root: Path, variants_file: bool = True) -> List[str]:
    base = root / "fgvc_aircraft"
    variants = ["A320", "Boeing 717", "F-16A/B"]
    k = 1000000
    for s, n in PER_SPLIT.items():
        lines = []
        for v in variants:
            for _ in range(n):
                k += 1
                png(base / "images" / f"{k}.jpg", k)
                lines.append(f"{k} {v}")
        (base / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    if variants_file:
        (base / "variants.txt").write_text("\n".join(variants) + "\n")
    return variants


@pytest.mark.parametrize("variants_file", [True, False])
def test_fgvc_aircraft_from_variant_lists(tmp_path, variants_file):
    variants = make_aircraft(tmp_path, variants_file)
    ds = load_dataset("fgvc_aircraft", str(tmp_path))
    assert ds.classnames == sorted(variants)
    assert ds.templates == COOP_TEMPLATES["fgvc_aircraft"]
    assert len(ds.train) == 9 and len(ds.val) == 6 and len(ds.test) == 6
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.train.describe(0).endswith("images/1000001.jpg")
    ds.train.load(0)


def test_fgvc_aircraft_unknown_variant_names_line(tmp_path):
    make_aircraft(tmp_path)
    txt = tmp_path / "fgvc_aircraft" / "images_variant_test.txt"
    txt.write_text(txt.read_text() + "1000001 Concorde\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt line 7: variant 'Concorde'"):
        load_dataset("fgvc_aircraft", str(tmp_path))


def test_fgvc_aircraft_path_escape_refused(tmp_path):
    make_aircraft(tmp_path)
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").write_text("../../secret A320\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt line 1.*'\.\.'"):
        load_dataset("fgvc_aircraft", str(tmp_path))


# --------------------------------------------------------------------------- missing paths and bad split files


def test_missing_dataset_folder_names_path_and_doc(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("oxford_pets", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "oxford_pets") in msg
    assert "docs/datasets.md#oxford_pets" in msg


def test_missing_split_file_names_path(tmp_path):
    make_coop(tmp_path, "dtd")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("dtd", str(tmp_path))
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in str(err.value)
    assert "docs/datasets.md#dtd" in str(err.value)


def test_data_root_pointing_at_dataset_folder_gets_a_hint(tmp_path):
    make_coop(tmp_path, "dtd")
    with pytest.raises(DataError, match=r"CONTAINS dtd/.*--data-root " + re.escape(str(tmp_path))):
        load_dataset("dtd", str(tmp_path / "dtd"))


def test_missing_listed_image_names_path(tmp_path):
    split = make_coop(tmp_path, "oxford_pets")
    gone = tmp_path / "oxford_pets" / "images" / split["test"][0][0]
    gone.unlink()
    with pytest.raises(DataError) as err:
        load_dataset("oxford_pets", str(tmp_path))
    assert str(gone) in str(err.value)


def _rewrite(tmp_path: Path, name: str, edit) -> None:
    path = tmp_path / COOP_LAYOUTS[name].folder / COOP_LAYOUTS[name].split_file
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda d: d.update(train={"a": 1}), r"'train' must be a list"),
        (lambda d: d["train"].__setitem__(1, ["x.jpg", 0]), r"train\[1\].*expected \[rel_path, label, classname\]"),
        (lambda d: d["val"].__setitem__(0, [d["val"][0][0], -1, "abyssinian"]), r"val\[0\].*label -1 is out of range"),
        (lambda d: d["val"].__setitem__(0, [d["val"][0][0], "0", "abyssinian"]), r"val\[0\].*must be an integer"),
        (lambda d: d["test"].__setitem__(2, [d["test"][2][0], 0, "sphynx"]),
         r"test\[2\] gives label 0 the class name 'sphynx' but train\[0\] named it 'abyssinian'"),
        (lambda d: d["test"].append(["img_0001.jpg", 5, "sphynx"]), r"label\(s\) 3, 4 have no entry"),
        (lambda d: [e.__setitem__(2, "beagle") for e in d["train"] + d["val"] + d["test"] if e[1] == 0],
         r"duplicate class name.*label 0 \('beagle'.*label 2 \('beagle'"),
        (lambda d: d.update(train=[e for e in d["train"] if e[1] != 1]),
         r"no training image, e.g. 'american_bulldog' \(label 1"),
        (lambda d: d.pop("test"), r"missing the split\(s\) 'test'"),
    ],
)
def test_bad_split_file_reports_entry(tmp_path, edit, pattern):
    make_coop(tmp_path, "oxford_pets")
    _rewrite(tmp_path, "oxford_pets", edit)
    with pytest.raises(DataError, match=pattern):
        load_dataset("oxford_pets", str(tmp_path))


def test_split_file_not_json(tmp_path):
    make_coop(tmp_path, "oxford_pets")
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text("{not json")
    with pytest.raises(DataError, match=r"split_zhou_OxfordPets.json is not valid JSON \(line 1"):
        load_dataset("oxford_pets", str(tmp_path))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "a/../../b.jpg"])
def test_path_escape_refused(tmp_path, bad):
    make_coop(tmp_path, "oxford_pets")
    _rewrite(tmp_path, "oxford_pets", lambda d: d["test"].__setitem__(1, [bad, 0, "abyssinian"]))
    with pytest.raises(DataError, match=r"test\[1\].*refused"):
        load_dataset("oxford_pets", str(tmp_path))


def test_labels_disagreeing_with_class_folders(tmp_path):
    make_coop(tmp_path, "caltech101")
    # an airplanes/ image labelled as the accordion class
    _rewrite(tmp_path, "caltech101", lambda d: d["val"].__setitem__(0, ["airplanes/train_0.jpg", 0, "accordion"]))
    with pytest.raises(DataError, match=r"val\[0\] puts 'airplanes/train_0.jpg' in class 'accordion'.*disagree"):
        load_dataset("caltech101", str(tmp_path))


def test_classnames_disagreeing_with_class_folders(tmp_path):
    make_coop(tmp_path, "dtd")
    # two labels stored in the same folder
    _rewrite(tmp_path, "dtd", lambda d: d["test"].__setitem__(0, ["blotchy/test_0.jpg", 1, "blotchy"]) or
             [e.__setitem__(0, "blotchy/train_0.jpg") for e in d["train"] if e[1] == 0])
    pattern = r"the folder 'blotchy' holds class 'banded' \(label 0, train\[0\]\) and class 'blotchy'.*disagree"
    with pytest.raises(DataError, match=pattern):
        load_dataset("dtd", str(tmp_path))


def test_unknown_dataset_option_is_a_config_error(tmp_path):
    make_coop(tmp_path, "dtd")
    with pytest.raises(ConfigError, match="does not take the option"):
        load_dataset("dtd", str(tmp_path), shots=3)


# --------------------------------------------------------------------------- generic splitjson


def test_splitjson_generic_dataset(tmp_path):
    classes = ["red_square", "blue circle"]
    split = {"train": [], "test": []}
    for s, n in (("train", 3), ("test", 2)):
        for label, c in enumerate(classes):
            for i in range(n):
                rel = f"{c}/{s}{i}.png"
                png(tmp_path / "images" / rel, label * 90 + i)
                split[s].append([rel, label, c])
    write_json(tmp_path / "split.json", split)
    # through the registry's build (load_dataset's own first parameter is also called ``name``)
    ds = get_dataset_spec("splitjson").build(tmp_path, name="shapes", templates=["a {} shape."])
    assert ds.name == "shapes" and ds.templates == ["a {} shape."]
    assert ds.classnames == ["red square", "blue circle"]
    assert ds.val is None and len(ds.train) == 6 and len(ds.test) == 4
    fs = few_shot_split(ds, 1, seed=0)
    assert fs.val_from == "train" and not set(fs.support_indices) & set(fs.val_indices)


def test_splitjson_missing_split_file(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("splitjson", str(tmp_path))
    assert str(tmp_path / "split.json") in str(err.value) and "#splitjson" in str(err.value)


# --------------------------------------------------------------------------- ImageNet and OOD sets

TENCH, GOLDFISH, STINGRAY, GOLDFINCH = "n01440764", "n01443537", "n01498041", "n01531178"
SPACE = [TENCH, GOLDFISH, STINGRAY]


def make_imagenet(root: Path, per_class: int = 4, ood: bool = True, extra_a: bool = False) -> None:
    base = root / "imagenet" / "images"
    for i, w in enumerate(SPACE):
        for j in range(per_class):
            png(base / "train" / w / f"{w}_{j}.JPEG", 50 * i + j)
        png(base / "val" / w / f"ILSVRC2012_val_{i:08d}.JPEG", 50 * i)
    if not ood:
        return
    for idx in (0, 1, 6):  # tench, goldfish, stingray as ImageNet labels
        for j in range(2):
            png(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(idx) / f"{j}.jpeg", idx + j)
    for w in SPACE:
        png(root / "imagenet-sketch" / "images" / w / "sketch_0.JPEG", 7)
    a_classes = [STINGRAY] + ([GOLDFINCH] if extra_a else [])
    for w in a_classes:
        png(root / "imagenet-adversarial" / "imagenet-a" / w / "a_0.jpg", 9)
    (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("ImageNet-A")
    for w in (GOLDFISH, STINGRAY):
        png(root / "imagenet-rendition" / "imagenet-r" / w / "r_0.jpg", 11)


def test_imagenet_layout_classnames_and_ood(tmp_path):
    make_imagenet(tmp_path)
    ds = load_dataset("imagenet", str(tmp_path))
    assert ds.classnames == ["tench", "goldfish", "stingray"]
    assert ds.templates == COOP_TEMPLATES["imagenet"]
    assert ds.val is None
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.test.labels.tolist() == [0, 1, 2]
    assert set(ds.ood) == {"imagenetv2", "imagenet-sketch", "imagenet-a", "imagenet-r"}
    v2 = ds.ood["imagenetv2"]
    assert sorted(v2.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert v2.describe(v2.labels.tolist().index(2)).split(os.sep)[-2] == "6"
    assert ds.ood["imagenet-sketch"].labels.tolist() == [0, 1, 2]
    assert ds.ood["imagenet-a"].labels.tolist() == [2]
    assert ds.ood["imagenet-a"].label_subset == [2]  # stingray is the only ImageNet-A class here
    assert ds.ood["imagenet-r"].label_subset == [1, 2]
    assert v2.label_subset is None and ds.ood["imagenet-sketch"].label_subset is None
    assert all(sp.load(0).size == (8, 8) for sp in ds.ood.values())


def test_imagenet_ood_classes_outside_the_label_space_are_left_out(tmp_path):
    make_imagenet(tmp_path, extra_a=True)
    with pytest.warns(UserWarning, match=r"imagenet-a: 1 of 2 class folder\(s\) are not among the classes"):
        ds = load_dataset("imagenet", str(tmp_path))
    assert ds.ood["imagenet-a"].labels.tolist() == [2]


def test_imagenet_ood_sets_alone_use_imagenet_label_space(tmp_path):
    make_imagenet(tmp_path, extra_a=True)
    index = imagenet_wnid_index()
    a = load_dataset("imagenet-a", str(tmp_path))
    assert len(a.classnames) == 1000 and len(a.train) == 0
    assert a.classnames[6] == "stingray"
    assert sorted(a.test.labels.tolist()) == [index[STINGRAY], index[GOLDFINCH]] == [6, 11]
    assert a.test.label_subset == sorted(index[w] for w in IMAGENET_A_WNIDS)
    assert len(a.test.label_subset) == 200 and max(a.test.label_subset) < 1000
    r = load_dataset("imagenet-r", str(tmp_path))
    assert r.test.labels.tolist() == [1, 6]
    assert r.test.label_subset == sorted(index[w] for w in IMAGENET_R_WNIDS)
    v2 = load_dataset("imagenetv2", str(tmp_path))
    assert sorted(set(v2.test.labels.tolist())) == [0, 1, 6] and v2.test.label_subset is None
    sk = load_dataset("imagenet-sketch", str(tmp_path))
    assert sk.test.labels.tolist() == [0, 1, 6]


def test_imagenet_sketch_raw_folder_name(tmp_path):
    png(tmp_path / "imagenet-sketch" / "sketch" / GOLDFISH / "1.JPEG")
    ds = load_dataset("imagenet-sketch", str(tmp_path))
    assert ds.test.labels.tolist() == [1]


def test_imagenet_a_rejects_a_class_outside_its_200(tmp_path):
    png(tmp_path / "imagenet-adversarial" / "imagenet-a" / TENCH / "0.jpg")
    with pytest.raises(DataError, match=r"'n01440764', which is not one of the 200 classes of imagenet-a"):
        load_dataset("imagenet-a", str(tmp_path))


def test_imagenet_flat_val_folder_is_explained(tmp_path):
    make_imagenet(tmp_path, ood=False)
    val = tmp_path / "imagenet" / "images" / "val"
    for w in SPACE:
        for f in (val / w).iterdir():
            f.unlink()
        (val / w).rmdir()
    png(val / "ILSVRC2012_val_00000001.JPEG")
    png(val / "ILSVRC2012_val_00000002.JPEG")
    with pytest.raises(DataError) as err:
        load_dataset("imagenet", str(tmp_path))
    msg = str(err.value)
    assert str(val) in msg and "2 image file(s) directly" in msg and "flat" in msg
    assert "<wnid>" in msg and "docs/datasets.md#imagenet" in msg


def test_imagenet_train_folder_not_wnids(tmp_path):
    make_imagenet(tmp_path, ood=False)
    png(tmp_path / "imagenet" / "images" / "train" / "cats" / "0.jpg")
    with pytest.raises(DataError, match=r"not ImageNet-1k WNIDs: cats"):
        load_dataset("imagenet", str(tmp_path))


def test_imagenet_sampling_deterministic_and_disjoint_from_validation(tmp_path):
    make_imagenet(tmp_path, ood=False)
    ds = load_dataset("imagenet", str(tmp_path))
    a, b = few_shot_split(ds, 2, seed=1), few_shot_split(ds, 2, seed=1)
    assert a.support_indices == b.support_indices and a.val_indices == b.val_indices
    assert a.val_from == "train"
    assert not set(a.support_indices) & set(a.val_indices)
    assert sorted(ds.train.labels[a.support_indices].tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(ds.train.labels[a.val_indices].tolist()) == [0, 0, 1, 1, 2, 2]
    c = few_shot_split(ds, 2, seed=2)
    assert (c.support_indices, c.val_indices) != (a.support_indices, a.val_indices)


def test_classname_data_lists():
    assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    index = imagenet_wnid_index()
    for lst in (IMAGENET_A_WNIDS, IMAGENET_R_WNIDS):
        assert len(lst) == len(set(lst)) == 200 and all(w in index for w in lst)


# --------------------------------------------------------------------------- corrupt images


def test_corrupt_image_check_and_drop(tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png", i)
    (tmp_path / "1.png").write_bytes(b"definitely not an image")
    split = FileSplit(tmp_path, [("0.png", 0), ("1.png", 1), ("2.png", 0), ("missing.png", 1)])
    with pytest.raises(DataError) as err:
        check_images(split, "the support set")
    assert str(tmp_path / "1.png") in str(err.value) and "2 unreadable" in str(err.value)
    with pytest.warns(UserWarning, match=r"skipping 2 unreadable image\(s\) in the support set: .*1\.png"):
        kept, bad = drop_unreadable(split, "the support set")
    assert bad == [str(tmp_path / "1.png"), str(tmp_path / "missing.png")]
    assert isinstance(kept, SubsetSplit) and kept.indices.tolist() == [0, 2]
    assert kept.labels.tolist() == [0, 0]
    good = FileSplit(tmp_path, [("0.png", 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop_unreadable(good) == (good, [])


# --------------------------------------------------------------------------- episodes


def test_sample_episode_shape_disjoint_and_seeded():
    labels = np.repeat(np.arange(8), 20)
    s, q, classes = sample_episode(labels, 5, 1, 15, np.random.default_rng(0))
    assert s.shape == (5,) and q.shape == (75,) and classes.shape == (5,)
    assert len(set(classes.tolist())) == 5
    assert not set(s.tolist()) & set(q.tolist()) and len(set(q.tolist())) == 75
    assert labels[s].tolist() == classes.tolist()
    assert labels[q].tolist() == np.repeat(classes, 15).tolist()
    assert episode_labels(5, 15).tolist() == np.repeat(np.arange(5), 15).tolist()
    s2, q2, c2 = sample_episode(labels, 5, 1, 15, np.random.default_rng(0))
    assert s.tolist() == s2.tolist() and q.tolist() == q2.tolist() and classes.tolist() == c2.tolist()
    sampler = EpisodeSampler(labels, 5, 5, 15)
    rng = np.random.default_rng(1)
    for _ in range(3):
        s, q, classes = sampler.sample(rng)
        assert s.shape == (25,) and q.shape == (75,) and not set(s.tolist()) & set(q.tolist())
        assert labels[s].tolist() == np.repeat(classes, 5).tolist()


def test_sample_episode_short_classes():
    labels = np.concatenate([np.repeat(np.arange(6), 20), np.full(7, 6)])
    pattern = r"1 class\(es\) have fewer than k_shot \+ n_query = 5 \+ 15 = 20 .*class 6 has 7"
    with pytest.raises(DataError, match=pattern):
        sample_episode(labels, 5, 5, 15, np.random.default_rng(0))
    with pytest.warns(UserWarning, match="left out"):
        sampler = EpisodeSampler(labels, 5, 5, 15, short="skip")
    assert 6 not in sampler.classes.tolist()
    with pytest.raises(DataError, match="5-way episodes need 5 classes"):
        sample_episode(np.repeat(np.arange(3), 20), 5, 1, 15, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        sample_episode(labels, 0, 1, 15, np.random.default_rng(0))


MINI = {"train": ["n01532829", "n01558993"], "val": ["n01855672"], "test": ["n01930112", "n01981276"]}


def test_miniimagenet_csv_layout(tmp_path):
    base = tmp_path / "miniimagenet"
    for s, wnids in MINI.items():
        rows = ["filename,label"]
        for w in wnids:
            for j in range(3):
                png(base / "images" / f"{w}{j:08d}.jpg", j)
                rows.append(f"{w}{j:08d}.jpg,{w}")
        (base / "split").mkdir(parents=True, exist_ok=True)
        (base / "split" / f"{s}.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("miniimagenet", str(tmp_path))
    _check_mini(ds)


def test_miniimagenet_folder_layout(tmp_path):
    for s, wnids in MINI.items():
        for w in wnids:
            for j in range(3):
                png(tmp_path / "miniimagenet" / s / w / f"{j}.jpg", j)
    ds = load_dataset("miniimagenet", str(tmp_path))
    _check_mini(ds)


def _check_mini(ds) -> None:
    assert ds.name == "miniimagenet" and ds.templates == IMAGENET_TEMPLATES
    index = imagenet_wnid_index()
    assert ds.classnames[0] == "house finch" and len(ds.classnames) == 5  # n01532829
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.val.labels.tolist() == [2, 2, 2]
    assert ds.test.labels.tolist() == [3, 3, 3, 4, 4, 4]
    assert index[MINI["train"][0]] == 12
    s, q, classes = sample_episode(ds.test.labels, 2, 1, 2, np.random.default_rng(0))
    assert sorted(classes.tolist()) == [3, 4] and ds.test.load(int(s[0])).size == (8, 8)


def test_miniimagenet_classes_shared_between_splits(tmp_path):
    for s in ("train", "test"):
        for w in ("n01532829", "n01558993"):
            png(tmp_path / "miniimagenet" / s / w / "0.jpg")
    with pytest.raises(DataError, match=r"class 'n01532829' is in both the train and the test split"):
        load_dataset("miniimagenet", str(tmp_path))


def test_miniimagenet_missing_layout(tmp_path):
    (tmp_path / "miniimagenet").mkdir()
    with pytest.raises(DataError, match=r"miniimagenet layout not found.*train.csv.*#miniimagenet"):
        load_dataset("miniimagenet", str(tmp_path))


def test_episodic_folder_cross_domain_sets(tmp_path):
    cub = tmp_path / CROSS_DOMAIN_SETS["cub"].folder
    for i, c in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]):
        for j in range(2):
            png(cub / c / f"{j}.jpg", i)
    ds = load_dataset("episodic_folder", str(tmp_path), set_name="cub")
    assert ds.name == "cub" and len(ds.train) == 0
    assert ds.classnames == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    two = load_dataset("episodic_folder", str(tmp_path), set_name="cub",
                       classes=["003.Sooty_Albatross", "001.Black_footed_Albatross"])
    assert two.classnames == ["Black footed Albatross", "Sooty Albatross"] and len(two.test) == 4

    omni = tmp_path / CROSS_DOMAIN_SETS["omniglot"].folder
    for a in ("Greek", "Latin"):
        for ch in ("character01", "character02"):
            png(omni / a / ch / "0.png")
    ds = load_dataset("episodic_folder", str(tmp_path), set_name="omniglot")
    assert ds.classnames[:2] == ["Greek character01", "Greek character02"]
    assert len(ds.classnames) == 4 and ds.test.describe(0).endswith(os.path.join("Greek", "character01", "0.png"))

    plain = get_dataset_spec("episodic_folder").build(cub, name="mine")
    assert plain.name == "mine" and len(plain.classnames) == 3


def test_episodic_folder_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("episodic_folder", str(tmp_path), set_name="fungi")
    assert str(tmp_path / "meta-dataset" / "fungi_train_val" / "images") in str(err.value)
    assert "docs/datasets.md#episodic-fungi" in str(err.value)
    with pytest.raises(ConfigError, match="unknown set_name 'birds'"):
        load_dataset("episodic_folder", str(tmp_path), set_name="birds")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    png(tmp_path / "a" / "0.png")
    with pytest.raises(DataError, match=r"1 class folder\(s\) .* have no images, e.g. .*b"):
        load_dataset("episodic_folder", str(tmp_path))


# --------------------------------------------------------------------------- docs


def _anchors(markdown: str) -> set:
    """GitHub's heading anchors (lower case, punctuation other than - and _ dropped)."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = m.group(1).strip().lower().replace("`", "")
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_docs_have_a_section_for_every_dataset_and_set():
    anchors = _anchors(DOCS.read_text())
    wanted = set(COOP_LAYOUTS) | set(OOD_LAYOUTS)
    wanted |= {"imagenet", "splitjson", "folder", "miniimagenet", "episodic_folder"}
    wanted |= {f"episodic-{s}" for s in CROSS_DOMAIN_SETS}
    assert not wanted - anchors, sorted(wanted - anchors)


def test_every_builtin_dataset_is_registered():
    from fdalign_plugins.plugins import list_datasets

    names = {s.name for s in list_datasets()}
    assert set(COOP_TEMPLATES) <= names
    assert {"world", "folder", "splitjson", "miniimagenet", "episodic_folder"} | set(OOD_LAYOUTS) <= names


def test_docs_dataset_plugin_example_runs(tmp_path):
    text = DOCS.read_text()
    code = re.search(r"<!-- example: dataset-plugin -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/datasets.md", "exec"), namespace)
    for s in ("train", "test"):
        for c in ("oak", "red_maple"):
            png(tmp_path / "leaves" / s / c / "0.png")
    ds = namespace["build_leaves"](tmp_path)
    assert ds.classnames == ["oak", "red maple"] and len(ds.train) == 2 and ds.test.labels.tolist() == [0, 1]
    specs = []
    namespace["fdalign_register_datasets"](specs.append)
    assert specs[0].name == "leaves"


def test_huge_label_is_reported_quickly(tmp_path):
    make_coop(tmp_path, "oxford_pets")
    _rewrite(tmp_path, "oxford_pets", lambda d: d["test"].__setitem__(0, [d["test"][0][0], 10**12, "sphynx"]))
    with pytest.raises(DataError, match=r"label\(s\) 3, 4, .* more have no entry \(the largest label, 1000000000000, "
                                         r"is used by test\[0\]\)"):
        load_dataset("oxford_pets", str(tmp_path))

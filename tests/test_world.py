"""The synthetic style-shift world: generator, splits, cache, shipped model, pretraining."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fdalign_plugins.prompts import IMAGENET_TEMPLATES  # noqa: E402
from fdalign_plugins.world import generator as gen  # noqa: E402
from fdalign_plugins.world.dataset import (  # noqa: E402
    SPLIT_STREAMS,
    build_world_dataset,
    cache_key,
    generate_split,
    split_plan,
)

ROOT = Path(__file__).resolve().parents[1]


def _load_tool(name: str, path: Path):
    """Import a script of ``tools/`` or ``benchmarks/`` (they are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pretrain_tool():
    return _load_tool("world_pretrain", ROOT / "tools" / "world_pretrain.py")

#: Zero-shot top-1 (%) of the shipped model on the fixed sample of
#: ``test_shipped_model_zero_shot_floor``, measured when the weights were made, minus a
#: margin for numerical noise across platforms. Update it with the weights.
SHIPPED_SAMPLE_ACC = 61.9
ZERO_SHOT_FLOOR = SHIPPED_SAMPLE_ACC - 8.0


def _rows(images: np.ndarray) -> set:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


# ----------------------------------------------------------------------- generator


def test_world_has_enough_classes_and_styles():
    assert len(gen.CLASSNAMES) >= 24 and len(set(gen.CLASSNAMES)) == len(gen.CLASSNAMES)
    assert len(gen.STYLES) >= 8
    assert set(gen.ID_STYLES).isdisjoint(gen.SKETCH_STYLES)
    assert all(s in gen.STYLE_NAMES for s in gen.ID_STYLES + gen.SKETCH_STYLES)


def test_every_template_belongs_to_exactly_one_style():
    owners = Counter(t for s in gen.STYLES for t in s.templates)
    assert set(owners) == set(IMAGENET_TEMPLATES)
    assert all(n == 1 for n in owners.values())


def test_generator_is_deterministic():
    labels, styles = np.arange(12) % 5, np.arange(12) % len(gen.STYLES)
    a = gen.render_many(labels, styles, seed=3, stream=1)
    b = gen.render_many(labels, styles, seed=3, stream=1)
    c = gen.render_many(labels, styles, seed=4, stream=1)
    d = gen.render_many(labels, styles, seed=3, stream=2)
    assert a.tobytes() == b.tobytes()
    assert all(not np.array_equal(x, y) for x, y in zip(a, c))
    assert all(not np.array_equal(x, y) for x, y in zip(a, d))


def test_every_class_renders_in_every_style():
    for si, style in enumerate(gen.STYLE_NAMES):
        for ci in range(len(gen.CLASSNAMES)):
            img = gen.render_image(ci, style, gen.image_rng(0, 0, si * 100 + ci))
            assert img.shape == (gen.IMAGE_SIZE, gen.IMAGE_SIZE, 3) and img.dtype == np.uint8
            assert img.std() > 2.0, (style, gen.CLASSNAMES[ci])  # not a blank canvas


def test_object_changes_the_image():
    """Same random stream, different class: the pictures differ (the class is visible)."""
    for style in gen.STYLE_NAMES:
        a = gen.render_image(0, style, gen.image_rng(0, 0, 0))
        b = gen.render_image(1, style, gen.image_rng(0, 0, 0))
        changed = (np.abs(a.astype(int) - b.astype(int)).max(-1) > 8).mean()
        assert changed > 0.01, style  # even a small circle vs a small square: > 1% of pixels


def test_unknown_style_and_class_fail_clearly():
    with pytest.raises(KeyError, match="unknown style"):
        gen.render_image(0, "watercolour", gen.image_rng(0, 0, 0))
    with pytest.raises(IndexError):
        gen.render_image(len(gen.CLASSNAMES), "photo", gen.image_rng(0, 0, 0))


def test_grid_command(tmp_path):
    out = tmp_path / "grid.png"
    assert gen.main(["--grid", str(out), "--zoom", "1"]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100


# -------------------------------------------------------------------------- splits

SMALL = dict(num_classes=4, train_per_class=6, val_per_class=3, test_per_class=5, ood_per_class=4)


def test_split_sizes_styles_and_no_overlap(tmp_path):
    ds = build_world_dataset(tmp_path, seed=0, **SMALL)
    assert ds.name == "world" and ds.classnames == list(gen.CLASSNAMES[:4]) and ds.templates
    sizes = {"train": 6, "val": 3, "test": 5}
    for name, n in sizes.items():
        split = getattr(ds, name)
        assert len(split) == 4 * n
        assert np.array_equal(np.bincount(split.labels), [n] * 4)
        assert {gen.STYLE_NAMES[s] for s in split.styles} <= set(gen.ID_STYLES)
    assert set(ds.ood) == {"decorrelated", "sketch"}
    assert {gen.STYLE_NAMES[s] for s in ds.ood["sketch"].styles} == set(gen.SKETCH_STYLES)
    assert {gen.STYLE_NAMES[s] for s in ds.ood["decorrelated"].styles} <= set(gen.ID_STYLES)
    assert all(len(s) == 16 for s in ds.ood.values())
    # every image has its own random stream: no image appears in two splits
    hashes = [_rows(s.images) for s in (ds.train, ds.val, ds.test, ds.ood["sketch"], ds.ood["decorrelated"])]
    assert sum(len(h) for h in hashes) == len(set().union(*hashes))
    assert len(set(SPLIT_STREAMS.values())) == len(SPLIT_STREAMS)


def test_each_context_is_preferred_by_four_classes():
    prefs = Counter(gen.preferred_context(c) for c in range(len(gen.CLASSNAMES)))
    assert set(prefs) == set(gen.ID_STYLES)
    assert set(prefs.values()) == {len(gen.CLASSNAMES) // len(gen.ID_STYLES)}


def test_five_confusable_pairs_share_their_context_and_four_do_not():
    """Every class prefers exactly one context; the pairs in SHARED_CONTEXT_PAIRS prefer the
    same one (only the content tells them apart), the other pairs different ones (the
    context is a shortcut)."""
    listed = [c for names in gen.PREFERRED_CONTEXTS.values() for c in names]
    assert sorted(listed) == sorted(gen.CLASSNAMES) and set(gen.PREFERRED_CONTEXTS) == set(gen.ID_STYLES)
    ctx = {c: gen.preferred_context(gen.CLASSNAMES.index(c)) for c in gen.CLASSNAMES}
    shared = [(a, b) for a, b in gen.CONFUSABLE_PAIRS if ctx[a] == ctx[b]]
    assert shared == list(gen.SHARED_CONTEXT_PAIRS) and len(shared) == 5
    assert sum(ctx[a] != ctx[b] for a, b in gen.CONFUSABLE_PAIRS) == 4


def test_context_is_correlated_with_class_in_distribution_and_not_in_decorrelated():
    """Counted from the split plans (labels, styles) of 1 000 images per class."""
    n, C, K = 1000, len(gen.CLASSNAMES), len(gen.ID_STYLES)
    for split in ("train", "val", "test"):
        labels, styles = split_plan(split, C, n, seed=0)
        pref = np.array([gen.style_index(gen.preferred_context(c)) for c in labels])
        hit = (styles == pref).reshape(C, n).mean(1)  # [C] share of preferred context per class
        assert np.all(np.abs(hit - gen.CONTEXT_PROB) < 0.06), (split, hit.min(), hit.max())
        # the marginal over contexts stays uniform: each context 1/8 of the images
        share = np.bincount(styles, minlength=len(gen.STYLE_NAMES))[[gen.style_index(s) for s in gen.ID_STYLES]]
        assert np.all(np.abs(share / len(styles) - 1 / K) < 0.01), (split, share)
        # a non-preferred image shows each other context about equally often
        other = styles[styles != pref]
        counts = np.bincount(other, minlength=len(gen.STYLE_NAMES))[[gen.style_index(s) for s in gen.ID_STYLES]]
        assert counts.min() > 0.8 * counts.mean()
    labels, styles = split_plan("decorrelated", C, 16, seed=0)
    for c in range(C):  # every class shows every context exactly twice
        assert np.array_equal(np.sort(np.bincount(styles[labels == c], minlength=len(gen.STYLE_NAMES))[
            [gen.style_index(s) for s in gen.ID_STYLES]]), [2] * K)
    assert set(gen.STYLE_NAMES[s] for s in split_plan("sketch", C, 6, seed=0)[1]) == set(gen.SKETCH_STYLES)


def test_split_does_not_depend_on_other_split_sizes(tmp_path):
    a = build_world_dataset(tmp_path, seed=0, **SMALL)
    b = build_world_dataset(tmp_path, seed=0, **dict(SMALL, train_per_class=2, ood_per_class=1))
    assert np.array_equal(a.test.images, b.test.images)


def test_cache_is_written_atomically_and_reused(tmp_path):
    ds = build_world_dataset(tmp_path, seed=1, **SMALL)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and f"g{gen.GENERATOR_VERSION}" in files[0].name
    assert "seed1" in files[0].name
    again = build_world_dataset(tmp_path, seed=1, **SMALL)
    assert np.array_equal(ds.train.images, again.train.images)
    fresh = generate_split("train", seed=1, num_classes=4, per_class=6)
    assert np.array_equal(fresh[0], ds.train.images)
    # a corrupt cache file is regenerated, not trusted
    files[0].write_bytes(b"not an npz")
    healed = build_world_dataset(tmp_path, seed=1, **SMALL)
    assert np.array_equal(healed.train.images, ds.train.images)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_key_names_everything_that_changes_content():
    base = cache_key(0, 32, {"train": 64, "test": 100}, 32)
    assert base != cache_key(1, 32, {"train": 64, "test": 100}, 32)
    assert base != cache_key(0, 16, {"train": 64, "test": 100}, 32)
    assert base != cache_key(0, 32, {"train": 64, "test": 50}, 32)
    assert base != cache_key(0, 32, {"train": 64, "test": 100}, 48)


def test_different_seed_gives_another_world(tmp_path):
    a = build_world_dataset(tmp_path, seed=0, **SMALL)
    b = build_world_dataset(tmp_path, seed=5, **SMALL)
    assert not np.array_equal(a.test.images, b.test.images)


def test_bad_options_fail_clearly(tmp_path):
    from fdalign_plugins.errors import ConfigError

    with pytest.raises(ConfigError, match="num_classes"):
        build_world_dataset(tmp_path, num_classes=99)
    with pytest.raises(ConfigError, match="split sizes"):
        build_world_dataset(tmp_path, **dict(SMALL, test_per_class=0))


# ------------------------------------------------------------------- shipped model


def test_shipped_weights_are_small_and_described():
    from fdalign_plugins.world.model import METADATA_FILE, WEIGHTS_FILE

    assert WEIGHTS_FILE.is_file(), "packaged world weights are missing"
    assert WEIGHTS_FILE.stat().st_size <= 8_000_000
    meta = json.loads(METADATA_FILE.read_text())
    assert meta["model"] == "fdalign-world-tiny"
    assert meta["sha256"] == hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()


def test_shipped_model_loads_offline():
    # (load time is a benchmark figure, not a test: benchmarks/bench_main.py prints it)
    from fdalign_plugins.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_clip

    assert (DEFAULT_MODEL, DEFAULT_PRETRAINED) == ("fdalign-world-tiny", "world")
    bundle = load_clip("fdalign-world-tiny", "world")
    assert bundle.image_size == gen.IMAGE_SIZE
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    assert 99.0 < bundle.logit_scale < 100.1  # tau = 100, as CLIP's; log(100) stored in fp16 reads back as 100.03


def test_shipped_model_zero_shot_floor(tmp_path):
    """Zero-shot top-1 (80 templates) on a fixed 320-image in-distribution sample."""
    from fdalign_plugins.models import load_clip
    from fdalign_plugins.prompts import class_prototypes, encode_prompts, normalise

    bundle = load_clip("fdalign-world-tiny", "world")
    ds = build_world_dataset(tmp_path, seed=0, train_per_class=1, val_per_class=1, test_per_class=10,
                             ood_per_class=1)
    W = class_prototypes(encode_prompts(bundle.model, bundle.tokenizer, ds.classnames, IMAGENET_TEMPLATES))
    x = torch.stack([bundle.eval_transform(ds.test.load(i)) for i in range(len(ds.test))])
    with torch.no_grad():
        f = normalise(bundle.model.encode_image(x))
    acc = float(((f @ W.t()).argmax(1).numpy() == ds.test.labels).mean() * 100)
    assert acc >= ZERO_SHOT_FLOOR, f"zero-shot {acc:.1f}% fell below the recorded floor {ZERO_SHOT_FLOOR}%"


# ----------------------------------------------------------------------- tokenizer


def test_world_tokenizer_maps_clip_bpe_onto_the_compact_vocabulary():
    from open_clip.tokenizer import SimpleTokenizer

    from fdalign_plugins.world.model import model_config
    from fdalign_plugins.world.tokenizer import PAD_ID, UNK_ID, WorldTokenizer, world_bpe_ids

    tok, bpe = WorldTokenizer(), SimpleTokenizer(context_length=24)
    ids = world_bpe_ids()
    assert model_config()["text_cfg"]["vocab_size"] == tok.vocab_size == len(ids) + 4
    text = "a photo of a crescent moon."
    with pytest.warns(UserWarning, match="'a zebra.' contain.s. other words"):
        out = tok([text, "a zebra."])
    assert out.shape == (2, 24) and out.dtype == torch.long
    # independent mapping: CLIP's BPE ids, each replaced by its position in the sorted world ids
    expected = [tok.sot_token_id] + [2 + ids.index(b) for b in bpe.encode(text)] + [tok.eot_token_id]
    assert out[0, :len(expected)].tolist() == expected and set(out[0, len(expected):].tolist()) == {PAD_ID}
    assert UNK_ID in out[1].tolist()  # "zebra" is not a world token
    # open_clip pools the text at the argmax token: the end token must be the largest id
    assert all(int(row.argmax()) == row.tolist().index(tok.eot_token_id) for row in out)
    # long texts are cut and keep their end token
    long = tok(["a photo of a circle " * 20])
    assert long.shape == (1, 24) and long[0, -1].item() == tok.eot_token_id


def test_every_world_text_tokenizes_without_unknown_tokens():
    from fdalign_plugins.world.tokenizer import UNK_ID, WorldTokenizer, world_texts

    texts = world_texts()
    assert set(IMAGENET_TEMPLATES) <= {t for s in gen.STYLES for t in s.templates}
    assert UNK_ID not in WorldTokenizer()(texts).unique().tolist()
    assert "a photo of a letter K." in texts and "a sketch of the number eight." in texts


def test_shipped_weights_record_the_vocabulary_they_were_trained_with():
    from fdalign_plugins.models import load_clip
    from fdalign_plugins.world.model import METADATA_FILE
    from fdalign_plugins.world.tokenizer import WorldTokenizer, world_bpe_ids

    meta = json.loads(METADATA_FILE.read_text())
    assert tuple(meta["vocabulary_bpe_ids"]) == world_bpe_ids()
    bundle = load_clip("fdalign-world-tiny", "world")
    assert isinstance(bundle.tokenizer, WorldTokenizer)
    assert bundle.model.token_embedding.weight.shape[0] == bundle.tokenizer.vocab_size


# --------------------------------------------------------------------- pretraining


def test_pretraining_lowers_the_loss_and_saves_loadable_weights(tmp_path, pretrain_tool):
    import open_clip

    PretrainConfig, pretrain, save_weights = pretrain_tool.PretrainConfig, pretrain_tool.pretrain, pretrain_tool.save_weights

    cfg = PretrainConfig(per_pair=2, num_classes=4, batch_size=32, max_steps=24, log_every=6, warmup_steps=2,
                         text_warmup_steps=6, lr=2e-3)
    model, hist = pretrain(cfg, log=lambda s: None)
    losses = [loss for _, loss in hist["losses"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert hist["text_warmup"][-1][1] < hist["text_warmup"][0][1] or len(hist["text_warmup"]) == 1
    path = save_weights(model, tmp_path, {"model": "fdalign-world-tiny", "test": True})
    assert (tmp_path / "fdalign-world-tiny.json").is_file()
    reloaded = open_clip.create_model("fdalign-world-tiny", pretrained=str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert b.dtype == a.dtype
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-2 * (1 + a.abs().max().item())), k


def test_caption_sampler_names_the_class_and_matches_the_style(pretrain_tool):
    CaptionSampler = pretrain_tool.CaptionSampler

    tok = pretrain_tool.world_tokenizer()
    s = CaptionSampler(tok, gen.CLASSNAMES, neutral_prob=0.5, bare_prob=0.25)
    rng = np.random.default_rng(0)
    dark, sketch = gen.style_index("dark photo"), gen.style_index("sketch")
    ids = s.template_ids(np.array([dark] * 200 + [sketch] * 200), rng)
    dark_t = {s.templates[i] for i in ids[:200]}
    sketch_t = {s.templates[i] for i in ids[200:]}
    assert dark_t <= set(gen.STYLE_BY_NAME["dark photo"].templates) | set(gen.NEUTRAL_TEMPLATES)
    assert dark_t & set(gen.STYLE_BY_NAME["dark photo"].templates) and dark_t & set(gen.NEUTRAL_TEMPLATES)
    assert sketch_t <= set(gen.STYLE_BY_NAME["sketch"].templates) | set(gen.BARE_TEMPLATES)
    assert all("{}" in t for t in s.templates)


def test_caption_swap_names_the_pair_partner_only(pretrain_tool):
    tok = pretrain_tool.world_tokenizer()
    names = list(gen.CLASSNAMES)
    circle, ring, house = names.index("circle"), names.index("ring"), names.index("house")
    labels = np.array([circle] * 4000 + [house] * 1000)
    rng = np.random.default_rng(0)
    never = pretrain_tool.CaptionSampler(tok, names, 0.5, 0.25, caption_swap=0.0).caption_labels(labels, rng)
    assert np.array_equal(never, labels)
    always = pretrain_tool.CaptionSampler(tok, names, 0.5, 0.25, caption_swap=1.0).caption_labels(labels, rng)
    assert set(always[:4000]) == {ring} and set(always[4000:]) == {house}  # house is in no pair
    some = pretrain_tool.CaptionSampler(tok, names, 0.5, 0.25, caption_swap=0.3).caption_labels(labels, rng)
    assert abs((some[:4000] == ring).mean() - 0.3) < 0.03 and set(some[4000:]) == {house}
    assert all(a in names and b in names for a, b in gen.CONFUSABLE_PAIRS)
    flat = [c for pair in gen.CONFUSABLE_PAIRS for c in pair]
    assert len(flat) == len(set(flat))  # a class belongs to at most one pair


def test_one_directional_caption_swap_leaves_the_partner_alone(pretrain_tool):
    """``swap_direction="first"``: captions of a pair's first class may name the second,
    never the reverse, so the two names keep distinct meanings."""
    tok = pretrain_tool.world_tokenizer()
    names = list(gen.CLASSNAMES)
    first, second = (names.index(c) for c in gen.CONFUSABLE_PAIRS[0])
    labels = np.array([first] * 4000 + [second] * 4000)
    sampler = pretrain_tool.CaptionSampler(tok, names, 0.5, 0.25, caption_swap=0.5, swap_direction="first")
    named = sampler.caption_labels(labels, np.random.default_rng(0))
    assert abs((named[:4000] == second).mean() - 0.5) < 0.03 and set(named[:4000]) == {first, second}
    assert set(named[4000:]) == {second}
    with pytest.raises(ValueError, match="swap_direction"):
        pretrain_tool.CaptionSampler(tok, names, 0.5, 0.25, caption_swap=0.5, swap_direction="second")


def test_corpus_has_fewer_sketches_and_batches_see_them_as_rarely(pretrain_tool):
    corpus = pretrain_tool.build_caption_corpus(seed=0, per_pair=5, num_classes=2, sketch_per_pair=1,
                                                styles=["photo", "painting", "sketch"])
    counts = Counter(gen.STYLE_NAMES[s] for s in corpus.styles)
    assert counts == {"photo": 10, "painting": 10, "sketch": 2}
    batches = pretrain_tool.StratifiedBatches(corpus.labels, corpus.styles, batch_size=2, rng=np.random.default_rng(0))
    seen = Counter(gen.STYLE_NAMES[corpus.styles[i]] for _ in range(1100) for i in batches.next())
    assert abs(seen["sketch"] / seen["photo"] - 0.2) < 0.05  # drawn in proportion to the corpus


def test_prototype_separation_against_a_hand_computed_example():
    wq = _load_tool("world_quality", ROOT / "benchmarks" / "world_quality.py")
    (a, b), (c, d) = gen.CONFUSABLE_PAIRS[:2]
    names = [a, b, c, d, "house"]  # two pairs and a class in none
    e = torch.eye(5)
    protos = torch.stack([e[0], 0.6 * e[0] + 0.8 * e[1], e[2], e[3], e[4]])  # unit rows
    sep = wq.prototype_separation(protos, names)
    # pair cosines 0.6 and 0; the 8 other pairs of distinct classes are orthogonal
    assert sep["pair_mean"] == pytest.approx(0.3) and sep["pair_max"] == pytest.approx(0.6)
    assert sep["other_mean"] == pytest.approx(0.0)


def test_gate_statistics_against_hand_computed_values():
    """The trained gates' values are the means the gate table defines; the bootstrap
    interval collapses to the value when every draw is the same, and brackets it otherwise."""
    wq = _load_tool("world_quality", ROOT / "benchmarks" / "world_quality.py")
    zs = {"test": 60.0, "decorrelated": 58.0, "sketch": 40.0}

    def draw(ft, wise, heads):
        return {"full_ft": dict(zip(wq.EVAL_SPLITS, ft)), "wise_ft": dict(zip(wq.EVAL_SPLITS, wise)),
                "head_only": dict(zip(wq.HEAD_ONLY, heads))}

    per_seed = [draw((62.0, 59.0, 39.0), (61.0, 59.5, 40.5), (63.0, 64.0)),
                draw((64.0, 60.0, 40.0), (62.0, 60.5, 40.2), (65.0, 63.0))]
    st = wq.gate_statistics(per_seed, zs, resamples=500)
    # FT means: test 63, decorrelated 59.5, sketch 39.5; WiSE: decorrelated 60.0, sketch 40.35
    assert st["G2"]["value"] == pytest.approx(3.0)
    assert st["G3"]["value"] == pytest.approx(max(64.0, 63.5) - 60.0 - 3.0)
    assert st["G4"]["value"] == pytest.approx(-0.5 / 3.0)
    assert st["G5"]["value"] == pytest.approx(min(60.0 - 59.5, 40.35 - 40.0))
    assert st["G6"]["value"] == pytest.approx((63.0 - 59.5) - (60.0 - 58.0))
    for g in st.values():
        assert g["lo"] <= g["value"] <= g["hi"]
    # resampling two draws: the G2 interval spans the two draws' own gains (2 and 4)
    assert st["G2"]["lo"] == pytest.approx(2.0) and st["G2"]["hi"] == pytest.approx(4.0)
    one = wq.gate_statistics(per_seed[:1], zs)
    assert one["G2"]["value"] == pytest.approx(2.0) and np.isnan(one["G2"]["lo"]) and np.isnan(one["G2"]["hi"])
    same = wq.gate_statistics([per_seed[0]] * 3, zs, resamples=200)
    assert all(g["lo"] == pytest.approx(g["value"]) == pytest.approx(g["hi"]) for g in same.values())
    assert wq.decided({"lo": 0.1, "hi": 0.4, "bound_lo": 0.0, "bound_hi": 1.0})
    assert wq.decided({"lo": -0.9, "hi": -0.6, "bound_lo": -0.5, "bound_hi": 0.0})
    assert not wq.decided({"lo": -0.3, "hi": 0.2, "bound_lo": -0.5, "bound_hi": 0.0})


def test_class_groups_and_group_accuracy_against_a_loop():
    wq = _load_tool("world_quality", ROOT / "benchmarks" / "world_quality.py")
    groups = wq.class_groups(gen.CLASSNAMES)
    assert sorted(i for ix in groups.values() for i in ix) == list(range(len(gen.CLASSNAMES)))
    assert [len(ix) for ix in groups.values()] == [10, 8, 14]
    g = torch.Generator().manual_seed(0)
    feats, protos = torch.randn(300, 8, generator=g), torch.nn.functional.normalize(torch.randn(32, 8, generator=g), dim=1)
    labels = np.arange(300) % 32
    got = wq.group_accuracy(feats, labels, protos, groups)
    for name, ix in groups.items():
        hits = [int(torch.argmax(protos @ (feats[i] / feats[i].norm())) == labels[i]) for i in range(300) if labels[i] in ix]
        assert got[name] == pytest.approx(100.0 * sum(hits) / len(hits))


def test_cheap_fidelity_gates_pass_on_the_shipped_model():
    """Gates G1 (zero-shot sketch/ID ratio) and G7 (style readable from P_spurious) of
    benchmarks/world_quality.py, on the shipped weights and the default world."""
    from fdalign_plugins.models import load_clip

    wq = _load_tool("world_quality", ROOT / "benchmarks" / "world_quality.py")
    bundle = load_clip("fdalign-world-tiny", "world")
    res = wq.cheap_measures(bundle, build_world_dataset(seed=0))
    failed = [name for name, gate in wq.CHEAP_GATES.items() if not gate(res)]
    assert not failed, (failed, res["zero_shot"]["acc"], res["style"])
    # the confusable pairs' text prototypes stay distinct (a one-way caption swap), so a
    # fine-tuned image encoder can learn to tell the pair apart
    assert res["prototypes"]["pair_max"] < 0.995, res["prototypes"]

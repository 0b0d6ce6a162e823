import numpy as np
import pytest
import torch

from fdalign_plugins.errors import ConfigError
from fdalign_plugins.prompts import (
    COOP_TEMPLATES, IMAGENET_ENSEMBLE_TEMPLATES, IMAGENET_TEMPLATES, class_prototypes, encode_prompts,
    resolve_templates, spurious_prototypes, text_classifier,
)
from fdalign_plugins.spc import spurious_prototype_correction


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert len(IMAGENET_ENSEMBLE_TEMPLATES) == 7
    assert "itap of a {}." in IMAGENET_TEMPLATES
    assert COOP_TEMPLATES["dtd"] == ["{} texture."]
    assert len(COOP_TEMPLATES) == 11
    assert all("{}" in t for ts in COOP_TEMPLATES.values() for t in ts)
    assert resolve_templates("imagenet80") == IMAGENET_TEMPLATES
    assert resolve_templates("a {} here") == ["a {} here"]
    with pytest.raises(ConfigError, match="unknown template set"):
        resolve_templates("nonsense")
    with pytest.raises(ConfigError, match="slot"):
        resolve_templates(["no slot"])


def test_prototypes_match_naive_loop(tiny_bundle):
    m, tok = tiny_bundle.model, tiny_bundle.tokenizer
    classes = ["cat", "dog", "red square"]
    templates = IMAGENET_TEMPLATES[:5]
    feats = encode_prompts(m, tok, classes, templates, batch_size=4)  # batching must not matter
    assert feats.shape == (5, 3, 32)
    with torch.no_grad():
        emb = {}
        for j, t in enumerate(templates):
            for y, c in enumerate(classes):
                e = m.encode_text(tok([t.format(c)]))[0].double()
                emb[j, y] = e / e.norm()
    for y in range(3):
        s = sum(emb[j, y] for j in range(5)) / 5
        assert torch.allclose(class_prototypes(feats)[y].double(), s / s.norm(), atol=1e-5)
    for j in range(5):
        s = sum(emb[j, y] for y in range(3)) / 3
        assert torch.allclose(spurious_prototypes(feats)[j].double(), s / s.norm(), atol=1e-5)
    w = text_classifier(m, tok, classes, templates)
    assert w.shape == (32, 3)
    assert torch.allclose(w.norm(dim=0), torch.ones(3), atol=1e-5)


def _protos(m=80, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g) * 0.3 + 2.0  # a tight cluster around (1, ..., 1)
    x[:5] = torch.randn(5, d, generator=g) * 3.0  # five planted outliers, random directions
    return x / x.norm(dim=1, keepdim=True)


def test_spc_deterministic_and_sizes():
    p = _protos()
    a = spurious_prototype_correction(p, n_keep=60, k=20, seed=3)
    b = spurious_prototype_correction(p, n_keep=60, k=20, seed=3)
    assert len(a.kept) == 60 and a.prototypes.shape == (20, 16)
    assert a.kept == b.kept and torch.equal(a.prototypes, b.prototypes)
    assert a.kept == sorted(a.kept)


def test_spc_keeps_most_normal_by_decision_function():
    from sklearn.ensemble import IsolationForest

    p = _protos()
    res = spurious_prototype_correction(p, n_keep=60, k=0, seed=1)
    s = IsolationForest(random_state=1).fit(p.double().numpy()).decision_function(p.double().numpy())
    expected = sorted(np.argsort(-s, kind="stable")[:60].tolist())
    assert res.kept == expected
    assert not set(range(5)) & set(res.kept)  # the planted outliers go
    assert torch.allclose(res.prototypes, p[expected])  # k-Means off: kept prototypes themselves


def test_spc_kmeans_centres_are_cluster_means():
    p = _protos()
    res = spurious_prototype_correction(p, n_keep=0, k=4, seed=0)
    assert res.kept == list(range(80)) and res.prototypes.shape == (4, 16)
    # every centre is the mean of the prototypes nearest to it (Lloyd's fixed point)
    d = torch.cdist(p.double(), res.prototypes.double())
    assign = d.argmin(1)
    for c in range(4):
        assert torch.allclose(p[assign == c].double().mean(0), res.prototypes[c].double(), atol=1e-4)


def test_spc_clips_when_few_templates():
    p = _protos(m=7)
    res = spurious_prototype_correction(p, n_keep=60, k=20, seed=0)
    assert len(res.kept) == 7 and res.prototypes.shape == (7, 16)
    res = spurious_prototype_correction(p, n_keep=5, k=20, seed=0)
    assert len(res.kept) == 5 and res.prototypes.shape == (5, 16)
    res = spurious_prototype_correction(p, n_keep=5, k=2, seed=0, renormalise=True)
    assert torch.allclose(res.prototypes.norm(dim=1), torch.ones(2), atol=1e-6)

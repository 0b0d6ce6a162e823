import math

import numpy as np
import pytest
import torch

from fdalign_plugins.losses import class_loss, cosine_logits, spurious_kl, total_loss


def _np_softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    f_ft = torch.randn(4, 6, generator=g, dtype=torch.float64)
    f_0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    protos = torch.randn(5, 6, generator=g, dtype=torch.float64)
    protos = protos / protos.norm(dim=1, keepdim=True)
    labels = torch.tensor([0, 3, 4, 1])
    return f_ft, f_0, protos, labels


def test_class_loss_matches_hand_computation(data):
    f, _, protos, labels = data
    tau = 7.5
    total = 0.0
    for i in range(len(f)):
        z = np.array([tau * _cos(f[i].numpy(), protos[c].numpy()) for c in range(len(protos))])
        total += -math.log(_np_softmax(z)[labels[i]])
    expected = total / len(f)
    assert class_loss(f, labels, protos, tau).item() == pytest.approx(expected, rel=1e-10)


def test_class_loss_small_known_value():
    # two orthogonal prototypes, features along the first: logits (tau, 0)
    f = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    protos = torch.eye(2, dtype=torch.float64)
    tau = 3.0
    expected = -math.log(math.exp(3.0) / (math.exp(3.0) + 1.0))
    assert class_loss(f, torch.tensor([0]), protos, tau).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("direction", ["overview", "reference"])
def test_spurious_kl_matches_hand_computation(data, direction):
    f_ft, f_0, protos, _ = data
    tau = 10.0
    kls = []
    for i in range(len(f_ft)):
        p_ft = _np_softmax(np.array([tau * _cos(f_ft[i].numpy(), p.numpy()) for p in protos]))
        p_0 = _np_softmax(np.array([tau * _cos(f_0[i].numpy(), p.numpy()) for p in protos]))
        p, q = (p_ft, p_0) if direction == "overview" else (p_0, p_ft)
        kls.append(sum(p[j] * math.log(p[j] / q[j]) for j in range(len(p))))
    expected = sum(kls) / len(kls)
    got = spurious_kl(f_ft, f_0, protos, tau, direction).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_kl_directions_differ_and_are_nonnegative(data):
    f_ft, f_0, protos, _ = data
    a = spurious_kl(f_ft, f_0, protos, 10.0, "overview").item()
    b = spurious_kl(f_ft, f_0, protos, 10.0, "reference").item()
    assert a > 0 and b > 0 and abs(a - b) > 1e-6


def test_kl_zero_for_identical_encoders(data):
    f, _, protos, _ = data
    for d in ("overview", "reference"):
        assert spurious_kl(f, f.clone(), protos, 100.0, d).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_finite_on_extreme_logits():
    protos = torch.eye(3)
    f_ft = torch.tensor([[1.0, 0.0, 0.0]])
    f_0 = torch.tensor([[0.0, 1.0, 0.0]])
    tau = 1e4  # softmax underflows to exact zeros: log(softmax) would give inf
    naive = (torch.softmax(tau * f_0, -1) * (torch.log(torch.softmax(tau * f_0, -1)) - torch.log(torch.softmax(tau * f_ft, -1)))).sum()
    assert not torch.isfinite(naive)
    for d in ("overview", "reference"):
        v = spurious_kl(f_ft, f_0, protos, tau, d)
        assert torch.isfinite(v)
        assert v.item() == pytest.approx(1e4, rel=1e-4)  # KL of two near-one-hot distributions = tau * gap


def test_unknown_direction():
    with pytest.raises(ValueError, match="overview, reference"):
        spurious_kl(torch.ones(1, 2), torch.ones(1, 2), torch.eye(2), 1.0, "sideways")


def test_total_loss():
    lc, ls = torch.tensor(2.0), torch.tensor(0.5)
    assert total_loss(lc, ls, 1.0, 1.0).item() == pytest.approx(2.5)
    assert total_loss(lc, ls, 0.5, 4.0).item() == pytest.approx(3.0)
    assert total_loss(lc, torch.tensor(float("nan")), 1.0, 0.0).item() == pytest.approx(2.0)


def test_cosine_logits_normalises_features():
    f = torch.tensor([[3.0, 4.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(cosine_logits(f, protos, 10.0), torch.tensor([[6.0, 8.0]]))

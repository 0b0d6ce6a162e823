"""Shared fixtures: a tiny open_clip model built from a config (no downloads) and a
tiny folder-per-class image set."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FDALIGN_OFFLINE", "1")
if "FDALIGN_CACHE" not in os.environ:  # generated worlds go to a throw-away folder, not ~/.cache
    import tempfile

    os.environ["FDALIGN_CACHE"] = tempfile.mkdtemp(prefix="fdalign-test-cache-")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)  # tiny ops: more threads only add contention

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_WIDE_CFG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _register():
    from fdalign_plugins.models import register_model_config

    register_model_config("fdalign-test-tiny", TINY_CFG)
    register_model_config("fdalign-test-tiny-wide", TINY_WIDE_CFG)


@pytest.fixture(scope="session")
def tiny_model_name():
    _register()
    return "fdalign-test-tiny"


@pytest.fixture()
def tiny_bundle(tiny_model_name):
    """A fresh, seeded, randomly initialised tiny CLIP (identical every time)."""
    from fdalign_plugins.models import load_clip

    torch.manual_seed(0)
    return load_clip(tiny_model_name, None)


CLASSES = ["red square", "green circle", "blue cross"]


def draw(cls: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A small synthetic image whose colour and shape depend on the class."""
    img = np.full((size, size, 3), 30, dtype=np.uint8)
    img += rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    c = [(220, 40, 40), (40, 200, 60), (50, 80, 230)][cls % 3]
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(10, size - 10, size=2)
    if cls % 3 == 0:
        mask = (abs(xx - cx) < 7) & (abs(yy - cy) < 7)
    elif cls % 3 == 1:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 49
    else:
        mask = (abs(xx - cx) < 2) | (abs(yy - cy) < 2)
    img[mask] = c
    return Image.fromarray(img)


def make_image_folder(root: Path, per_class: int = 8, seed: int = 0, classes=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for i, name in enumerate(classes):
        d = root / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            draw(i, rng).save(d / f"{j:03d}.png")
    return root


@pytest.fixture()
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-offs on a shared 2-core box
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def task(image_folder):
    """The trainer and method tests' few-shot task: 4 shots of the image folder, 2 for validation."""
    from fdalign_plugins.datasets import few_shot_split
    from fdalign_plugins.datasets.folder import build_folder_dataset

    ds = build_folder_dataset(image_folder)
    return ds, few_shot_split(ds, 4, 0, val_shots=2)


@pytest.fixture(autouse=True)
def _private_store(tmp_path, monkeypatch):
    """Each test gets its own encoder/feature store, so counts of work done are its own."""
    monkeypatch.setenv("FDALIGN_STORE", str(tmp_path / "store"))


_REPO_RUNS = Path(__file__).resolve().parents[1] / "runs"


@pytest.fixture(autouse=True, scope="session")
def _no_run_folders_in_the_working_tree():
    """Fail the session if a test wrote a default run folder into the repository."""
    before = set(_REPO_RUNS.iterdir()) if _REPO_RUNS.is_dir() else set()
    yield
    after = set(_REPO_RUNS.iterdir()) if _REPO_RUNS.is_dir() else set()
    new = sorted(str(p) for p in after - before)
    assert not new, f"tests left run folders in the working tree: {new}"


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A fake site-packages folder (``test_plugins.FakeSite``) with the plugin manager
    reset around the test and external plugins allowed."""
    from test_plugins import FakeSite

    from fdalign_plugins import plugins

    monkeypatch.delenv(plugins.NO_EXTERNAL_ENV, raising=False)
    fake = FakeSite(tmp_path / "site", monkeypatch)
    plugins.reset_plugin_manager()
    yield fake
    fake.cleanup()
    plugins.reset_plugin_manager()

"""Data-parallel fine-tuning and sharded / chunked feature extraction.

Two CPU processes (gloo) are spawned once per module; they fine-tune with DDP, resume,
and extract features, and write what they got to files that the tests compare with a
single process doing the same work.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

from fdalign_plugins import distributed as dist_utils
from fdalign_plugins.config import FinetuneConfig, build_config
from fdalign_plugins.datasets import few_shot_split
from fdalign_plugins.datasets.base import ArraySplit
from fdalign_plugins.datasets.folder import build_folder_dataset
from fdalign_plugins.errors import CheckpointError
from fdalign_plugins.features import FeatureCache
from fdalign_plugins.models import load_clip, state_fingerprint
from fdalign_plugins.trainer import epoch_batches, finetune, make_loader

WORLD = 2
TEMPLATES = ["a photo of a {}.", "a sketch of a {}.", "a dark photo of a {}."]
#: run name -> config overrides. "uneven": batches of 5 split 3/2 and the last (2) 1/1.
#: "standin": batches of 11 then 1, so rank 1 has no sample in the last step.
RUNS: Dict[str, Dict[str, Any]] = {
    "uneven": dict(batch_size=5, spurious_weight=1.0, epochs=2),
    "standin": dict(batch_size=11, spurious_weight=1.0, epochs=2, head="linear", select="last", grad_accum=2),
}


def _cfg(name: str, **kw) -> FinetuneConfig:
    base = dict(model=name, pretrained=None, dataset="folder", shots=4, seed=0, lr=0.02, templates=TEMPLATES,
                spc_keep=2, spc_k=2, val_shots=2, device="cpu")
    base.update(kw)
    return build_config(FinetuneConfig, base)


def _fresh(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return load_clip(name, None)


def _task(folder: Path):
    ds = build_folder_dataset(folder)
    return ds, few_shot_split(ds, 4, 0, val_shots=2)


def _array_split(n: int, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 255, (n, 40, 40, 3), dtype=np.uint8), np.arange(n) % 3, f"rand{n}")


def _extract_all(cache: FeatureCache, bundle) -> Dict[str, torch.Tensor]:
    """Test-transform and augmented-view features of a 9-image and a 3-image split."""
    visual = bundle.model.visual
    fp = state_fingerprint(visual)
    aug = bundle.train_transform(scale=(0.5, 1.0), flip=True)
    nine, three = _array_split(9), _array_split(3, seed=1)
    return {
        "test9": cache.features(visual, fp, nine, bundle.eval_transform),
        "view9": cache.features(visual, fp, nine, aug, view=0, seed=7),
        "test3": cache.features(visual, fp, three, bundle.eval_transform),
    }


def _worker(rank: int, port: int, folder: str, out: str) -> None:
    """One rank of the 2-process run; writes ``out/rank<r>.pt``."""
    import conftest

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    assert dist_utils.init_from_env(timeout_s=120)
    conftest._register()
    name = "fdalign-test-tiny"
    ds, split = _task(Path(folder))
    res: Dict[str, Any] = {}
    logs: list = []
    for run, kw in RUNS.items():
        b = _fresh(name)
        r = finetune(b, split.support, ds.classnames, _cfg(name, **kw), val=split.val, out_dir=Path(out) / run,
                     progress=False, log=logs.append)
        res[run] = {"visual": b.model.visual.state_dict(), "history": r.history, "best": r.best_epoch,
                    "head": None if r.head is None else r.head.state_dict()}
    # interrupted after epoch 1, resumed by a process with other RNG state
    cfg = _cfg(name, **RUNS["uneven"])
    try:
        finetune(_fresh(name), split.support, ds.classnames, cfg, val=split.val, out_dir=Path(out) / "cut",
                 progress=False, log=logs.append, stop_after_epoch=1)
    except KeyboardInterrupt:
        pass
    c = _fresh(name, seed=1234 + rank)
    r = finetune(c, split.support, ds.classnames, cfg, val=split.val, out_dir=Path(out) / "cut", resume=True,
                 progress=False, log=logs.append)
    res["resumed"] = {"visual": c.model.visual.state_dict(), "history": r.history, "best": r.best_epoch}
    # a state from another config is refused on every rank (no rank left waiting)
    try:
        finetune(_fresh(name), split.support, ds.classnames, _cfg(name, **{**RUNS["uneven"], "epochs": 3}),
                 out_dir=Path(out) / "other", progress=False, log=logs.append, stop_after_epoch=1)
    except KeyboardInterrupt:
        pass
    try:
        finetune(_fresh(name), split.support, ds.classnames, _cfg(name, **{**RUNS["uneven"], "epochs": 3, "lr": 0.5}),
                 out_dir=Path(out) / "other", resume=True, progress=False, log=logs.append)
        res["refused"] = ""
    except CheckpointError as exc:
        res["refused"] = str(exc)
    # sharded extraction, with chunks of 4 (9 -> 4, 4, 1: the last leaves rank 1 empty)
    cache = FeatureCache(Path(out) / "cache", batch_size=2, chunk_size=4)
    res["features"] = _extract_all(cache, _fresh(name))
    res["stats"] = vars(cache.stats)
    res["logs"] = logs
    torch.save(res, Path(out) / f"rank{rank}.pt")
    dist_utils.barrier()
    dist_utils.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_model_name):
    """Runs :func:`_worker` on 2 spawned processes; returns (task folder, [rank 0, rank 1] results, out)."""
    import torch.multiprocessing as mp

    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("ddp")
    folder = make_image_folder(root / "images")
    out = root / "out"
    ctx = mp.start_processes(_worker, args=(_free_port(), str(folder), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.time() + 240
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                raise TimeoutError("the 2-process DDP run did not finish in 240 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return folder, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)], out


def _assert_close_states(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max().item())


@pytest.mark.parametrize("run", list(RUNS))
def test_ddp_two_processes_equal_one_process(ddp, tiny_model_name, run):
    folder, ranks, _ = ddp
    # DDP keeps the replicas identical, bit for bit
    for k, v in ranks[0][run]["visual"].items():
        assert torch.equal(v, ranks[1][run]["visual"][k]), k
    ds, split = _task(folder)
    b = _fresh(tiny_model_name)
    single = finetune(b, split.support, ds.classnames, _cfg(tiny_model_name, **RUNS[run]), val=split.val,
                      progress=False, log=lambda s: None)
    _assert_close_states(b.model.visual.state_dict(), ranks[0][run]["visual"], atol=1e-5)
    if single.head is not None:
        _assert_close_states(single.head.state_dict(), ranks[0][run]["head"], atol=1e-5)
    got = ranks[0][run]["history"]
    assert ranks[0][run]["best"] == ranks[1][run]["best"] == single.best_epoch
    for h1, hd0, hd1 in zip(single.history, got, ranks[1][run]["history"]):
        assert hd0["val_acc"] == hd1["val_acc"] == h1["val_acc"]
        for k in ("l_class", "l_spurious", "loss"):
            assert hd0[k] == pytest.approx(h1[k], rel=1e-5, abs=1e-6) and hd0[k] == hd1[k], k


def test_ddp_resume_and_rank0_only_writes(ddp):
    _, ranks, out = ddp
    for r in ranks:
        for k, v in r["uneven"]["visual"].items():
            assert torch.equal(v, r["resumed"]["visual"][k]), k
        assert [h["l_class"] for h in r["resumed"]["history"]] == [h["l_class"] for h in r["uneven"]["history"]]
        assert "another config" in r["refused"] and "lr" in r["refused"]
    assert any(line.startswith("epoch 2/2") for line in ranks[0]["logs"])
    assert any(line.startswith("resuming from") for line in ranks[0]["logs"])
    assert ranks[1]["logs"] == []
    for run in ("uneven", "standin", "cut"):
        assert (out / run / "encoder.safetensors").is_file() and not (out / run / "train_state.pt").exists()


def test_sharded_extraction_equals_unsharded(ddp, tiny_model_name, tmp_path):
    _, ranks, out = ddp
    single = _extract_all(FeatureCache(tmp_path / "c"), _fresh(tiny_model_name))
    for k, v in single.items():
        assert torch.equal(ranks[0]["features"][k], ranks[1]["features"][k]), k
        assert ranks[0]["features"][k].shape == v.shape, k
        assert torch.allclose(ranks[0]["features"][k], v, atol=1e-5, rtol=0), k
    # chunked entries were assembled and the chunks removed: rank 0 wrote exactly one entry per split
    assert ranks[0]["stats"]["chunks_computed"] == 3 + 3 + 1
    assert len(list((out / "cache").rglob("*.safetensors"))) == 3


def test_every_rank_gets_the_images_a_single_process_gets(tiny_bundle, tmp_path):
    split = _array_split(7)
    tf = tiny_bundle.train_transform(scale=(0.3, 1.0), flip=True)
    single = list(make_loader(split, tf, 3, seed=5, epoch=2))
    parts = [list(make_loader(split, tf, 3, seed=5, epoch=2, rank=r, world_size=3)) for r in range(3)]
    shares = [epoch_batches(7, 3, 5, 2, rank=r, world_size=3) for r in range(3)]
    for step, (x, y) in enumerate(single):
        real = [(parts[r][step], shares[r][step]) for r in range(3)]
        xs = torch.cat([p[0][: s.local_size] for p, s in real])
        ys = torch.cat([p[1][: s.local_size] for p, s in real])
        assert torch.equal(xs, x) and torch.equal(ys, y)
        assert all(s.global_size == len(y) for _, s in real)
    # loader workers do not change the images either
    for (x, y), (xw, yw) in zip(single, make_loader(split, tf, 3, seed=5, epoch=2, workers=2)):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    # the last global batch holds 1 image: ranks 1 and 2 carry a weight-0 stand-in
    assert [shares[r][-1].local_size for r in range(3)] == [1, 0, 0]
    assert shares[1][-1].indices == shares[0][-1].indices
    # the global RNG is not consumed by augmentation
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    list(make_loader(split, tf, 3, seed=5, epoch=2))
    assert torch.equal(torch.rand(1), before)


class _Killed(Exception):
    pass


class _DiesOnCall(torch.nn.Module):
    """Wraps an encoder and raises on forward call ``n`` (as a killed process would stop)."""

    def __init__(self, inner: torch.nn.Module, n: int):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise _Killed()
        return self.inner(x)


def test_chunked_extraction_resumes_at_the_first_missing_chunk(tiny_bundle, tmp_path):
    split = _array_split(10)
    visual = tiny_bundle.model.visual
    fp = state_fingerprint(visual)
    aug = tiny_bundle.train_transform(scale=(0.5, 1.0), flip=True)
    whole = FeatureCache(tmp_path / "whole", batch_size=4)
    ref_test = whole.features(visual, fp, split, tiny_bundle.eval_transform)
    ref_view = whole.features(visual, fp, split, aug, view=1, seed=3)
    assert whole.stats.chunks_computed == 2

    chunked = FeatureCache(tmp_path / "chunked", batch_size=4, chunk_size=4)  # 4, 4, 2
    assert torch.allclose(chunked.features(visual, fp, split, aug, view=1, seed=3), ref_view, atol=1e-5, rtol=0)
    with pytest.raises(_Killed):  # dies while encoding the second chunk
        chunked.features(_DiesOnCall(visual, 2), fp, split, tiny_bundle.eval_transform)

    restarted = FeatureCache(tmp_path / "chunked", batch_size=4, chunk_size=4)
    got = restarted.features(visual, fp, split, tiny_bundle.eval_transform)
    assert torch.allclose(got, ref_test, atol=1e-5, rtol=0)
    st = restarted.stats
    assert (st.chunks_cached, st.chunks_computed, st.images_encoded, st.computed) == (1, 2, 6, 1)
    # the assembled entry replaced its chunks; the next call is a plain hit
    assert len(list((tmp_path / "chunked").rglob("*.safetensors"))) == 2
    again = FeatureCache(tmp_path / "chunked", batch_size=4, chunk_size=4)
    assert torch.equal(again.features(visual, fp, split, tiny_bundle.eval_transform), got)
    assert (again.stats.hits, again.stats.images_encoded) == (1, 0)


def test_single_process_helpers_need_no_process_group():
    assert not dist_utils.is_initialized()
    assert (dist_utils.rank(), dist_utils.world_size(), dist_utils.is_main()) == (0, 1, True)
    assert dist_utils.all_reduce_floats([1.5, 2]) == [1.5, 2.0]
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(dist_utils.all_gather_varlen(t)[0], t)
    assert dist_utils.init_from_env() is False  # WORLD_SIZE unset
    assert [dist_utils.shard_range(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [dist_utils.shard_range(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]

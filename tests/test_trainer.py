import pickle

import pytest
import torch

from fdalign_plugins.checkpoint import load_encoder_into, read_encoder
from fdalign_plugins.config import FinetuneConfig, build_config
from fdalign_plugins.datasets import few_shot_split
from fdalign_plugins.datasets.folder import build_folder_dataset
from fdalign_plugins.errors import CheckpointError, TrainingError
from fdalign_plugins.losses import class_loss
from fdalign_plugins.models import load_clip
from fdalign_plugins.trainer import (
    encode_images, fdalign_losses, finetune, make_loader, text_prototypes,
)


def _cfg(tiny_model_name, **kw):
    base = dict(model=tiny_model_name, pretrained=None, dataset="folder", shots=4, seed=0, epochs=2,
                batch_size=4, lr=0.01, templates=["a photo of a {}.", "a sketch of a {}.", "a dark photo of a {}."],
                spc_keep=2, spc_k=2, val_shots=2)
    base.update(kw)
    return build_config(FinetuneConfig, base)


def _fresh(name):
    torch.manual_seed(0)
    return load_clip(name, None)


def _support_loss(bundle, split, classnames, cfg):
    protos = text_prototypes(bundle, classnames, cfg)
    f = encode_images(bundle.model.visual, split, bundle.eval_transform)
    return class_loss(f, torch.as_tensor(split.labels), protos.class_protos, bundle.logit_scale).item()


def test_training_lowers_loss(tiny_model_name, task):
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=6, spurious_weight=1.0, lr=0.05, select="last")
    bundle = _fresh(tiny_model_name)
    before = _support_loss(bundle, split.support, ds.classnames, cfg)
    res = finetune(bundle, split.support, ds.classnames, cfg, val=split.val, progress=False, log=lambda s: None)
    after = _support_loss(bundle, split.support, ds.classnames, cfg)
    assert after < before - 0.05
    assert len(res.history) == 6
    assert all(h["l_spurious"] >= 0 for h in res.history)
    assert res.history[0]["l_spurious"] > 0  # the encoders diverge as soon as one step was taken


def test_spurious_weight_zero_is_plain_cross_entropy_step_for_step(tiny_model_name, task):
    ds, split = task
    cfg = _cfg(tiny_model_name, spurious_weight=0.0, epochs=2, select="last", weight_decay=0.0, nesterov=False, momentum=0.0,
               warmup_epochs=0.0, grad_clip=0.0)
    a = _fresh(tiny_model_name)
    finetune(a, split.support, ds.classnames, cfg, progress=False, log=lambda s: None)

    # plain loop: SGD on cross-entropy against fixed prototypes, same batches, same cosine lr
    b = _fresh(tiny_model_name)
    protos = text_prototypes(b, ds.classnames, cfg)
    vis = b.model.visual
    vis.train()
    opt = torch.optim.SGD(vis.parameters(), lr=cfg.lr)
    import math
    total = 2 * math.ceil(len(split.support) / cfg.batch_size)
    it = 0
    tf = b.train_transform(scale=cfg.aug_scale)
    for epoch in (1, 2):
        for x, y in make_loader(split.support, tf, cfg.batch_size, cfg.seed, epoch):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * it / total))
            loss = class_loss(vis(x), y, protos.class_protos, b.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
    for (k, va), vb in zip(a.model.visual.state_dict().items(), vis.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k


def test_fdalign_losses_spurious_weight_zero_skips_frozen(tiny_model_name, task):
    ds, split = task
    cfg = _cfg(tiny_model_name, spurious_weight=0.0)
    b = _fresh(tiny_model_name)
    protos = text_prototypes(b, ds.classnames, cfg)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 1])

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("frozen encoder must not run when spurious_weight = 0")

    out = fdalign_losses(b.model.visual, Boom(), x, y, protos, b.logit_scale, cfg)
    assert out["total"].item() == pytest.approx(out["class"].item())


def test_checkpoint_round_trip_exact(tiny_model_name, task, tmp_path):
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=1)
    b = _fresh(tiny_model_name)
    res = finetune(b, split.support, ds.classnames, cfg, val=split.val, out_dir=tmp_path / "run", progress=False,
                   log=lambda s: None)
    assert res.checkpoint.is_file() and res.checkpoint.with_suffix(".json").is_file()
    assert not (tmp_path / "run" / "train_state.pt").exists()
    stock = _fresh(tiny_model_name)
    meta = load_encoder_into(stock.model, tmp_path / "run")
    for (k, v1), v2 in zip(b.model.visual.state_dict().items(), stock.model.visual.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert meta["model"] == tiny_model_name and meta["shots"] == 4 and meta["seed"] == 0
    assert meta["spc"]["num_prototypes"] == 2 and len(meta["spc"]["kept_templates"]) == 2
    assert meta["config"]["epochs"] == 1 and len(meta["history"]) == 1
    tensors, _ = read_encoder(res.checkpoint)
    assert tensors["extra.spurious_prototypes"].shape == (2, 32)
    # the text tower is untouched
    for (k, v1), v2 in zip(b.model.transformer.state_dict().items(), stock.model.transformer.state_dict().values()):
        assert torch.equal(v1, v2)


def test_wrong_architecture_and_foreign_files(tiny_model_name, task, tmp_path):
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=1)
    b = _fresh(tiny_model_name)
    finetune(b, split.support, ds.classnames, cfg, out_dir=tmp_path / "run", progress=False, log=lambda s: None)
    wide = load_clip("fdalign-test-tiny-wide", None)
    with pytest.raises(CheckpointError, match=r"made for fdalign-test-tiny .*shape mismatch.*--model fdalign-test-tiny"):
        load_encoder_into(wide.model, tmp_path / "run")

    evil = tmp_path / "evil.safetensors"

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder_into(b.model, evil)
    assert not (tmp_path / "pwned").exists()

    data = (tmp_path / "run" / "encoder.safetensors").read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder_into(b.model, trunc)

    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not an FD-Align encoder"):
        load_encoder_into(b.model, other)
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder_into(b.model, tmp_path / "missing.safetensors")


def test_resume_equals_uninterrupted(tiny_model_name, task, tmp_path):
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=3)
    a = _fresh(tiny_model_name)
    ra = finetune(a, split.support, ds.classnames, cfg, val=split.val, out_dir=tmp_path / "a", progress=False,
                  log=lambda s: None)

    b = _fresh(tiny_model_name)
    with pytest.raises(KeyboardInterrupt):
        finetune(b, split.support, ds.classnames, cfg, val=split.val, out_dir=tmp_path / "b", progress=False,
                 log=lambda s: None, stop_after_epoch=1)
    assert (tmp_path / "b" / "train_state.pt").is_file()
    torch.manual_seed(12345)  # a resumed process starts with other RNG state
    c = _fresh(tiny_model_name)
    rc = finetune(c, split.support, ds.classnames, cfg, val=split.val, out_dir=tmp_path / "b", resume=True,
                  progress=False, log=lambda s: None)
    assert rc.best_epoch == ra.best_epoch
    assert [h["l_class"] for h in rc.history] == [h["l_class"] for h in ra.history]
    for (k, v1), v2 in zip(a.model.visual.state_dict().items(), c.model.visual.state_dict().values()):
        assert torch.equal(v1, v2), k

    # a state from another config is refused, not silently mixed in
    d = _fresh(tiny_model_name)
    with pytest.raises(KeyboardInterrupt):
        finetune(d, split.support, ds.classnames, cfg, out_dir=tmp_path / "d", progress=False, log=lambda s: None,
                 stop_after_epoch=1)
    other = _cfg(tiny_model_name, epochs=3, lr=0.5)
    with pytest.raises(CheckpointError, match="another config.*lr"):
        finetune(_fresh(tiny_model_name), split.support, ds.classnames, other, out_dir=tmp_path / "d", resume=True,
                 progress=False, log=lambda s: None)


def test_nan_loss_names_the_step(tiny_model_name, task):
    ds, split = task
    cfg = _cfg(tiny_model_name, lr=1e30, epochs=2, select="last", momentum=0.0, nesterov=False)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1, step [2-9].*learning rate"):
        finetune(_fresh(tiny_model_name), split.support, ds.classnames, cfg, progress=False, log=lambda s: None)


def test_linear_head_initialised_from_prototypes(tiny_model_name, task):
    ds, split = task
    cfg = _cfg(tiny_model_name, head="linear", epochs=1, lr=0.0, select="last")
    b = _fresh(tiny_model_name)
    res = finetune(b, split.support, ds.classnames, cfg, progress=False, log=lambda s: None)
    assert torch.allclose(res.head.weight, b.logit_scale * res.protos.class_protos, atol=1e-5)
    assert torch.equal(res.head.bias, torch.zeros(3))


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_batchnorm_statistics(image_folder, freeze):
    from fdalign_plugins.models import register_model_config

    register_model_config("fdalign-test-tiny-rn", {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}})
    ds = build_folder_dataset(image_folder)
    split = few_shot_split(ds, 4, 0, val_shots=2)
    cfg = _cfg("fdalign-test-tiny-rn", epochs=1, freeze_bn=freeze, select="last")
    b = load_clip("fdalign-test-tiny-rn", "none")
    bn = [m for m in b.model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    w0 = b.model.visual.conv1.weight.detach().clone()
    finetune(b, split.support, ds.classnames, cfg, val=split.val, progress=False, log=lambda s: None,
             )
    same = all(torch.equal(m.running_mean, r) for m, r in zip(bn, before))
    assert same == freeze
    assert not torch.equal(b.model.visual.conv1.weight, w0)  # the weights were trained either way


def test_fine_tuning_that_never_beats_the_original_is_rejected(tiny_model_name, task):
    """Epoch 0 (the encoder as given) is a candidate of the validation selection: with
    lr = 0 no epoch can be strictly better, so the original encoder is kept."""
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=2, lr=0.0)
    b = _fresh(tiny_model_name)
    res = finetune(b, split.support, ds.classnames, cfg, val=split.val, progress=False, log=lambda s: None)
    assert res.best_epoch == 0
    assert res.metadata["best_val_acc"] == res.history[0]["val_acc"] == res.history[1]["val_acc"]
    # with select: last the last epoch is kept whatever validation says
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames, _cfg(tiny_model_name, epochs=2, lr=0.0,
                   select="last"), val=split.val, progress=False, log=lambda s: None)
    assert res.best_epoch == 2


def test_warmup_in_epochs_is_a_share_of_iterations(tiny_model_name, task):
    """warmup_epochs counts iterations per epoch: with the whole run as warm-up the LR
    after epoch 1 (s steps) is lr * (s + 1) / (2 s), the linear ramp's value."""
    import math

    from fdalign_plugins.spine import warmup_iterations

    assert warmup_iterations(0, 2.0, 8) == 16 and warmup_iterations(5, 0.5, 3) == 7 and warmup_iterations(3, 0, 9) == 3
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=2, warmup_epochs=2.0, grad_clip=0.0, select="last")
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames, cfg, progress=False, log=lambda s: None)
    s = math.ceil(len(split.support) / cfg.batch_size)
    assert res.history[0]["lr"] == pytest.approx(cfg.lr * (s + 1) / (2 * s))

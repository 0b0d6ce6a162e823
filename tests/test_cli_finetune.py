import json

import torch

from fdalign_plugins.checkpoint import load_encoder_into
from fdalign_plugins.cli.finetune import main as finetune_main
from fdalign_plugins.models import load_clip


def test_finetune_cli_writes_loadable_checkpoint(tiny_model_name, image_folder, tmp_path, capsys):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("epochs: 3\nlr: 0.5\nbatch_size: 4\nspc_keep: 2\nspc_k: 2\n"
                   "templates: ['a photo of a {}.', 'a sketch of a {}.', 'a dark photo of a {}.']\n")
    out = tmp_path / "run"
    argv = ["--config", str(cfg), "--model", tiny_model_name, "--pretrained", "none", "--data", str(image_folder),
            "--shots", "4", "--seed", "0", "--epochs", "2", "--out", str(out), "--quiet"]
    assert finetune_main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"checkpoint: {out / 'encoder.safetensors'}" in stdout
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["config"]["epochs"] == 2  # flag beats YAML
    assert meta["config"]["lr"] == 0.5  # YAML beats default
    assert meta["dataset"] == "folder" and meta["classnames"] == ["blue cross", "green circle", "red square"]
    assert len(meta["support_indices"]) == 12 and len(meta["history"]) == 2
    bundle = load_clip(tiny_model_name, "none")
    stock = {k: v.clone() for k, v in bundle.model.visual.state_dict().items()}
    load_encoder_into(bundle.model, out)
    assert any(not torch.equal(stock[k], v) for k, v in bundle.model.visual.state_dict().items())

    # the same command again refuses to overwrite; with --resume it reports the finished checkpoint
    assert finetune_main(argv) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert finetune_main(argv + ["--resume"]) == 0
    assert "checkpoint already complete" in capsys.readouterr().out


def test_finetune_cli_errors(tiny_model_name, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert finetune_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) 'epochz'; valid keys:" in err and "epochs" in err and "Traceback" not in err
    assert finetune_main(["--model", tiny_model_name, "--pretrained", "none", "--data", str(tmp_path / "none")]) == 2
    assert f"dataset folder not found: {tmp_path / 'none'}" in capsys.readouterr().err
    assert finetune_main(["--model", "ViT-B-32", "--pretrained", "openai", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot fetch pretrained weights ViT-B-32/openai" in err and "--pretrained /path/to/weights" in err
    assert finetune_main(["--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_corrupt_image_fails_before_training(tiny_model_name, image_folder, tmp_path, capsys):
    for f in (image_folder / "red_square").glob("*.png"):  # whichever the support set draws (some are held out)
        f.write_bytes(b"not a png")
    rc = finetune_main(["--model", tiny_model_name, "--pretrained", "none", "--data", str(image_folder), "--shots", "4",
                        "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "unreadable image(s)" in err and "red_square/0" in err
    assert not (tmp_path / "o").exists()


def test_no_images_left_for_validation(tiny_model_name, image_folder, tmp_path, capsys):
    # 8 images per class, 2 held out as the test split: 6 shots take the whole pool
    rc = finetune_main(["--model", tiny_model_name, "--pretrained", "none", "--data", str(image_folder), "--shots", "6",
                        "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert "no images left once the support set is taken; use fewer shots" in capsys.readouterr().err

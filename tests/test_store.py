"""The shared store: a second command computes only what is genuinely new."""

import os
import re
import time

from fdalign_plugins.cli.bench import main as bench_main
from fdalign_plugins.store import Store, prune, usage

from test_bench import small_config  # noqa: F401 - fixture


def _summary(err):
    m = re.search(r"(\d+) record\(s\) written, (\d+) already done, (\d+) failed; (\d+) encoder\(s\) fine-tuned; "
                  r"features computed (\d+), from cache (\d+)", err)
    assert m, err
    return tuple(int(x) for x in m.groups())


def test_adapter_all_after_the_main_job_fine_tunes_and_extracts_nothing(small_config, tmp_path, capsys):  # noqa: F811
    store = tmp_path / "store"
    common = ["--config", str(small_config), "--shots", "1", "--cache-dir", str(store), "--quiet"]
    assert bench_main(common + ["--adapter", "tip", "--out", str(tmp_path / "main")]) == 0
    first = _summary(capsys.readouterr().err)
    assert first[3] == 1 and first[4] > 0  # the main job fine-tuned one encoder and extracted features
    rc = bench_main(common + ["--adapter", "all", "--out", str(tmp_path / "all")])
    err = capsys.readouterr().err
    assert rc == 0, err
    written, done, failed, finetuned, computed, hits = _summary(err)
    assert (finetuned, computed, failed) == (0, 0, 0) and hits == first[4] + first[5] and written > first[0]
    # the run folder holds records, reports and a link to the encoder in the store
    links = list((tmp_path / "all" / "encoders").iterdir())
    assert len(links) == 1 and links[0].is_symlink() and links[0].resolve().parent == (store / "encoders").resolve()
    assert not (tmp_path / "all" / "cache").exists()
    assert {p.name for p in (tmp_path / "all").iterdir()} >= {"results.jsonl", "table.md", "table.csv", "config.json"}


def test_a_reused_encoder_trained_with_another_thread_count_is_named_in_the_record_and_on_screen(
        small_config, tmp_path, capsys):  # noqa: F811
    import json

    import torch

    from fdalign_plugins.bench.context import thread_mismatch

    assert thread_mismatch({"train_threads": 2}, 2) == "" and thread_mismatch({}, 1) == ""
    assert "fine-tuned with 2 thread(s) while this run uses 1" in thread_mismatch({"train_threads": 2}, 1)
    store = tmp_path / "store"
    common = ["--config", str(small_config), "--shots", "1", "--cache-dir", str(store), "--quiet", "--adapter", "tip"]
    before = torch.get_num_threads()
    try:
        assert bench_main(common + ["--threads", "2", "--out", str(tmp_path / "two")]) == 0
        err = capsys.readouterr().err
        assert "note: encoder" not in err
        assert bench_main(common + ["--threads", "1", "--out", str(tmp_path / "one")]) == 0
        err = capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    assert _summary(err)[3] == 0  # reused, not fine-tuned again
    assert "reused an encoder fine-tuned with 2 thread(s) while this run uses 1" in err
    recs = [json.loads(line) for line in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    tuned = [r for r in recs if r["encoder"] == "fdalign"]
    assert tuned and all(r["encoder_train_threads"] == 2 and r["platform"]["threads"] == 1 for r in tuned)
    assert all(r.get("encoder_train_threads") is None for r in recs if r["encoder"] == "clip")


def test_size_report_and_prune(tmp_path, capsys):
    store = Store(tmp_path / "s")
    old, new = store.features / "ab" / "ab1.safetensors", store.features / "cd" / "cd2.safetensors"
    enc = store.encoders / "fdalign-1shot-seed1-abc"
    for p, n in ((old, 100), (new, 50), (enc / "encoder.safetensors", 30), (enc / "encoder.json", 7)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * n)
    week_ago = time.time() - 7 * 86400
    for p in (old, enc / "encoder.safetensors", enc / "encoder.json"):
        os.utime(p, (week_ago, week_ago))
    u = usage(store)
    assert (u.feature_entries, u.feature_bytes, u.encoders, u.encoder_bytes) == (2, 150, 1, 37)
    assert bench_main(["--cache-dir", str(store.root), "--store-size"]) == 0
    out = capsys.readouterr().out
    assert f"store {store.root}" in out and "features: 2 entries, 0.0 MB" in out and "encoders: 1 folders" in out
    gone = prune(store, 3)
    assert (gone.feature_entries, gone.feature_bytes, gone.encoders, gone.encoder_bytes) == (1, 100, 1, 37)
    assert new.is_file() and not old.exists() and not enc.exists()
    assert bench_main(["--cache-dir", str(store.root), "--prune", "0"]) == 0
    assert "removed 1 feature entries and 0 encoder folder(s)" in capsys.readouterr().out
    assert usage(store).total_bytes == 0


def test_default_store_location(monkeypatch, tmp_path):
    from fdalign_plugins.store import default_store_root

    monkeypatch.setenv("FDALIGN_STORE", str(tmp_path / "a"))
    assert default_store_root() == tmp_path / "a"
    monkeypatch.delenv("FDALIGN_STORE")
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "c"))
    assert default_store_root() == tmp_path / "c" / "store"


def test_run_header_says_how_much_work_lies_ahead_and_progress_prints_lines_off_a_tty(small_config, tmp_path,  # noqa: F811
                                                                                     capsys, monkeypatch):
    from fdalign_plugins import progress

    monkeypatch.setattr(progress, "PLAIN_MIN_ITEMS", 20)  # the test's splits are tiny: lines for 20+ images
    common = ["--config", str(small_config), "--shots", "1,2", "--adapter", "tip", "--cache-dir", str(tmp_path / "s")]
    assert bench_main(common + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err  # not a terminal: plain progress lines, no carriage-return bars
    head = [line for line in err.splitlines() if "record(s) to compute" in line]
    assert len(head) == 1 and "4 classes; 1 seed(s) x 2 shot count(s) x 2 encoder(s) x 2 adapter(s): 8 record(s) " \
        "to compute, 0 already done; 2 encoder(s) to fine-tune, 0 reused from the store" in head[0]
    # 2 shots x 2 encoders; each pass: 20 test + 2 x 16 OOD + 4 classes x (val K + K shots x 2 views)
    passes = 2 * 2 * (20 + 32) + 2 * 4 * (1 + 2) + 2 * 4 * (2 + 4)
    assert f"4 feature pass(es) over up to {passes} images" in head[0]
    assert "\r" not in err and re.search(r"features clip test: 20 img to do", err)
    assert "note: adapter_params given for tip-f, which this run does not include" in err  # checked, not ignored
    assert "encoding the text classifier (4 classes x" in err
    assert re.search(r"features clip test: 20/20 img done in [\d.]+ s \(\d+ img/s\)", err)
    assert "features clip val" not in err  # 4 images: too small a step for a line
    assert bench_main(common + ["--out", str(tmp_path / "b"), "--adapter", "tip,ape"]) == 0
    err = capsys.readouterr().err
    assert "12 record(s) to compute" in err and "0 encoder(s) to fine-tune, 2 reused from the store" in err
    assert "img to do" not in err  # every feature was read back


def test_two_runs_never_fine_tune_the_same_encoder_at_once(tmp_path):
    import threading

    store = Store(tmp_path / "s")
    said, order = [], []

    def second():
        with store.lock("fdalign-1shot-seed1-abc", log=said.append):
            order.append("second")

    with store.lock("fdalign-1shot-seed1-abc"):
        t = threading.Thread(target=second)
        t.start()
        t.join(1.0)
        assert t.is_alive() and order == []  # blocked while the first holds the lock
        order.append("first")
    t.join(5.0)
    assert order == ["first", "second"]
    assert said == ["waiting for another run that is fine-tuning the same encoder (fdalign-1shot-seed1-abc)"]
    with store.lock("other"):  # another encoder is not blocked
        pass

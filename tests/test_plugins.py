"""The plugin manager with faked installed distributions (a ``*.dist-info`` on sys.path)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict

import pytest
import torch

from fdalign_plugins import plugins
from fdalign_plugins.adapter_api import FewShotTask, normalise
from fdalign_plugins.errors import FDAlignError, PluginError
from fdalign_plugins.plugins import get_plugin_manager
from fdalign_plugins import registry as plugins_registry

BUILTIN_ADAPTERS = ["ape", "ape-t", "clap", "clip-adapter", "gda", "linear-probe", "lp++", "tip", "tip-f", "zero-shot"]
REPO = Path(__file__).resolve().parents[1]

GOOD_ADAPTER = '''
from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import Adapter, zero_shot_logits


class Halves(Adapter):
    name = "halves"
    summary = "half the zero-shot logits (test plugin)"
    trains = False
    defaults = {"scale": 0.5}
    dataset_defaults = {"eurosat": {"scale": 0.25}}

    def fit(self, task):
        hp = self.resolve(task)
        self._classifier, self._scale = task.classifier, hp["scale"]
        self.record_chosen(hp)
        return self

    def predict(self, features):
        self.check_features(features)
        return self._scale * zero_shot_logits(features, self._classifier)


@hookimpl
def fdalign_register_adapters(register):
    register(Halves.spec())
'''

DATASET_PLUGIN = '''
from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import DatasetSpec


def build(root=None, **options):
    raise RuntimeError("not needed in this test")


@hookimpl
def fdalign_register_datasets(register):
    register(DatasetSpec(name="toyset", summary="a toy dataset (test plugin)", build=build, needs_root=False))
'''

BROKEN_IMPORT = '''
raise RuntimeError("boom at import time")
'''

BROKEN_HOOK = '''
from fdalign_plugins import hookimpl


@hookimpl
def fdalign_register_adapters(register):
    raise ValueError("boom inside the hook")
'''

TYPO_HOOK = '''
from fdalign_plugins import hookimpl


@hookimpl
def fdalign_register_adaptors(register):
    pass
'''

DUPLICATE_TIP = '''
from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import AdapterSpec


@hookimpl
def fdalign_register_adapters(register):
    register(AdapterSpec(name="tip", summary="another tip", trains=False, factory=dict, defaults={}))
'''


class FakeSite:
    """A folder on sys.path holding fake installed distributions and their modules."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.modules: list = []
        root.mkdir(parents=True, exist_ok=True)
        monkeypatch.syspath_prepend(str(root))

    def add(self, dist: str, entry_points: Dict[str, Dict[str, str]], modules: Dict[str, str], version: str = "1.0") -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines.extend(f"{name} = {value}" for name, value in eps.items())
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in modules.items():
            (self.root / f"{name}.py").write_text(textwrap.dedent(source))
            self.modules.append(name)
            sys.modules.pop(name, None)

    def cleanup(self) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)


def tiny_task(dataset="toy", seed=0):
    g = torch.Generator().manual_seed(seed)
    classes, shots, dim = 3, 2, 8
    means = normalise(torch.randn(classes, dim, generator=g))
    labels = torch.arange(classes).repeat_interleave(shots)
    support = means[labels][None] * 2 + 0.3 * torch.randn(2, len(labels), dim, generator=g)
    val_labels = torch.arange(classes).repeat(2)
    val = normalise(means[val_labels] + 0.3 * torch.randn(len(val_labels), dim, generator=g))
    classifier = normalise(means.T + 0.8 * torch.randn(dim, classes, generator=g), dim=0)
    return FewShotTask(support, labels, classifier, val, val_labels, dataset, shots, seed)


# ----------------------------------------------------------------------- built-ins


def test_builtins_come_from_our_own_entry_points():
    pm = get_plugin_manager(load_external=False)
    specs = {s.name: s for s in pm.list_adapters()}
    assert sorted(specs) == BUILTIN_ADAPTERS
    assert all(s.distribution == plugins.OWN_DISTRIBUTION for s in specs.values())
    assert {n for n, s in specs.items() if s.trains} == {"tip-f", "ape-t", "lp++", "clap", "clip-adapter", "linear-probe"}
    assert specs["tip"].search_space["beta"].values(specs["tip"].defaults)[:2] == [0.1, 0.1 + 6.9 / 200]
    assert specs["tip"].dataset_defaults["oxford_flowers"]["beta_scale"] == 50.0
    listing = pm.format_listing()
    assert "tip-f         trains         selects: val/fixed/test" in listing
    assert "zero-shot     training-free  selects: fixed" in listing
    assert "clap          trains         selects: fixed" in listing and "lp++          trains         selects: val  " in listing
    assert listing.count("[fdalign-plugins]") >= 10
    assert pm.registry() is pm.registry()  # collected once per manager
    pm.reset_registry()
    assert [s.name for s in pm.list_adapters()] == BUILTIN_ADAPTERS


def test_unknown_adapter_lists_the_valid_ones():
    pm = get_plugin_manager(load_external=False)
    with pytest.raises(PluginError, match=r"^unknown adapter 'tipp'; valid: ape, ape-t, clap, clip-adapter, gda, linear-probe, lp\+\+, tip, tip-f, zero-shot$"):
        pm.create_adapter("tipp")
    with pytest.raises(PluginError, match=r"unknown dataset 'nope'; valid: "):
        pm.get_dataset_spec("nope")
    with pytest.raises(FDAlignError, match="valid: alpha"):
        pm.create_adapter("tip", alpah=1.0)


# ----------------------------------------------------------------------- fake third parties


def test_third_party_adapter_is_listed_created_and_fitted(site):
    site.add("fdalign-halves", {"fdalign.adapters": {"halves": "tp_halves"}}, {"tp_halves": GOOD_ADAPTER}, "2.3")
    site.add("toy-data", {"fdalign.datasets": {"toy": "tp_toyset"}}, {"tp_toyset": DATASET_PLUGIN})
    listing = plugins.format_listing()
    assert "halves        training-free  selects: val/test          half the zero-shot logits (test plugin)  [fdalign-halves]" in listing
    assert "toyset" in listing and "[toy-data]" in listing
    spec = plugins.get_adapter_spec("halves")
    assert spec.distribution == "fdalign-halves" and not spec.trains
    assert plugins.get_dataset_spec("toyset").distribution == "toy-data"
    task = tiny_task()
    adapter = plugins.create_adapter("halves").fit(task)
    assert torch.allclose(adapter.predict(task.val_features), 50.0 * task.val_features @ task.classifier)
    eurosat = plugins.create_adapter("halves").fit(tiny_task("eurosat"))
    assert eurosat.chosen_hparams() == {"scale": 0.25}  # per-dataset default
    assert [s.name for s in plugins.list_adapters()] == sorted(BUILTIN_ADAPTERS + ["halves"])
    assert plugins.broken_plugins() == []


def test_a_broken_plugin_is_reported_and_the_others_still_load(site):
    site.add("fdalign-halves", {"fdalign.adapters": {"halves": "tp_halves2"}}, {"tp_halves2": GOOD_ADAPTER})
    site.add("bad-import", {"fdalign.adapters": {"kaboom": "tp_kaboom"}}, {"tp_kaboom": BROKEN_IMPORT})
    site.add("bad-hook", {"fdalign.adapters": {"hooky": "tp_hooky"}}, {"tp_hooky": BROKEN_HOOK})
    site.add("bad-typo", {"fdalign.adapters": {"typo": "tp_typo"}}, {"tp_typo": TYPO_HOOK})
    site.add("bad-missing", {"fdalign.adapters": {"ghost": "tp_does_not_exist"}}, {})
    pm = get_plugin_manager()
    broken = {b.name: b for b in pm.broken_plugins()}
    assert broken["kaboom"].distribution == "bad-import"
    assert broken["kaboom"].error == "RuntimeError: boom at import time"
    assert broken["ghost"].distribution == "bad-missing" and "ModuleNotFoundError" in broken["ghost"].error
    assert broken["hooky"] == ("hooky", "bad-hook", "ValueError: boom inside the hook")
    assert broken["typo"].distribution == "bad-typo" and "fdalign_register_adaptors" in broken["typo"].error
    assert len(broken) == 4
    name, dist, error = pm.broken_plugins()[0]  # (name, distribution, error) tuples
    assert [s.name for s in pm.list_adapters()] == sorted(BUILTIN_ADAPTERS + ["halves"])
    listing = pm.format_listing()
    assert "Broken plugins:" in listing and "kaboom [bad-import]: RuntimeError: boom at import time" in listing
    assert "[fdalign-halves]" in listing


def test_duplicate_adapter_name_disables_the_later_plugin_and_names_both(site):
    # "aaa-tip" sorts before "fdalign-plugins": the built-in must still keep its name
    site.add("aaa-tip", {"fdalign.adapters": {"tip2": "tp_dup"}}, {"tp_dup": DUPLICATE_TIP})
    site.add("fdalign-halves", {"fdalign.adapters": {"halves": "tp_halves_dup"}}, {"tp_halves_dup": GOOD_ADAPTER})
    pm = get_plugin_manager()
    assert [s.name for s in pm.list_adapters()] == sorted(BUILTIN_ADAPTERS + ["halves"])  # the rest still works
    assert pm.get_adapter_spec("tip").distribution == "fdalign-plugins"
    broken = {b.name: b for b in pm.broken_plugins()}
    assert list(broken) == ["tip2"] and broken["tip2"].distribution == "aaa-tip"
    assert ("adapter name 'tip' is registered twice: by distribution 'fdalign-plugins' and by distribution 'aaa-tip' "
            "(plugin 'tip2'); the later plugin is disabled") in broken["tip2"].error
    listing = pm.format_listing()  # fdalign-bench --list keeps working and shows the clash
    assert "Broken plugins:" in listing and "tip2 [aaa-tip]: PluginError: adapter name 'tip'" in listing


def test_duplicate_name_disables_the_whole_later_plugin(site):
    both = GOOD_ADAPTER + DATASET_PLUGIN.replace("from fdalign_plugins import hookimpl", "")
    site.add("first", {"fdalign.adapters": {"a": "tp_first"}}, {"tp_first": GOOD_ADAPTER})
    site.add("second", {"fdalign.adapters": {"b": "tp_second"}}, {"tp_second": both})
    pm = get_plugin_manager()
    assert pm.get_adapter_spec("halves").distribution == "first"
    # the clashing plugin's dataset is gone too: a half-loaded plugin would be a silent surprise
    assert "toyset" not in [d.name for d in pm.list_datasets()]
    assert [b.name for b in pm.broken_plugins()] == ["b"]


def test_env_var_skips_external_plugins_but_keeps_builtins(site, monkeypatch):
    site.add("fdalign-halves", {"fdalign.adapters": {"halves": "tp_halves3"}}, {"tp_halves3": GOOD_ADAPTER})
    site.add("bad-import", {"fdalign.adapters": {"kaboom": "tp_kaboom2"}}, {"tp_kaboom2": BROKEN_IMPORT})
    assert "halves" in [s.name for s in get_plugin_manager().list_adapters()]
    monkeypatch.setenv(plugins.NO_EXTERNAL_ENV, "1")
    pm = get_plugin_manager()
    assert [s.name for s in pm.list_adapters()] == BUILTIN_ADAPTERS
    assert pm.broken_plugins() == []  # the broken external one was never imported
    assert "tp_kaboom2" not in sys.modules
    assert "external plugins skipped" in pm.format_listing()
    plugins.reset_plugin_manager()
    assert "halves" not in [s.name for s in plugins.list_adapters()]
    assert [s.name for s in get_plugin_manager(load_external=True).list_adapters()] == sorted(BUILTIN_ADAPTERS + ["halves"])


def test_two_distributions_may_use_the_same_entry_point_name(site):
    site.add("fdalign-halves", {"fdalign.adapters": {"extra": "tp_halves4"}}, {"tp_halves4": GOOD_ADAPTER})
    site.add("toy-data", {"fdalign.datasets": {"extra": "tp_toyset2"}}, {"tp_toyset2": DATASET_PLUGIN})
    site.add("other", {"fdalign.adapters": {"extra": "tp_zs"}}, {"tp_zs": GOOD_ADAPTER.replace('"halves"', '"halves2"')})
    pm = get_plugin_manager()
    assert pm.broken_plugins() == []
    assert {"halves", "halves2"} <= {s.name for s in pm.list_adapters()}
    assert pm.get_adapter_spec("halves2").distribution == "other"


def test_a_module_listed_in_both_groups_registers_once(site):
    both = GOOD_ADAPTER + DATASET_PLUGIN.replace("from fdalign_plugins import hookimpl", "")
    site.add("two-in-one", {"fdalign.adapters": {"h": "tp_both"}, "fdalign.datasets": {"d": "tp_both"}}, {"tp_both": both})
    pm = get_plugin_manager()
    assert "halves" in [s.name for s in pm.list_adapters()]
    assert "toyset" in [s.name for s in pm.list_datasets()]
    assert pm.broken_plugins() == []


# ----------------------------------------------------------------------- the documented example package


def test_example_plugin_package_installs_lists_and_runs(tmp_path, monkeypatch):
    """pip-install docs/example_plugin (offline, no deps) into a target folder and use it."""
    source = tmp_path / "example_plugin"
    shutil.copytree(REPO / "docs" / "example_plugin", source)
    target = tmp_path / "site"
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        check=True, timeout=120, capture_output=True,
    )
    assert time.time() - started < 60
    assert (target / "fdalign_proto.py").exists()
    monkeypatch.delenv(plugins.NO_EXTERNAL_ENV, raising=False)
    monkeypatch.syspath_prepend(str(target))
    sys.modules.pop("fdalign_proto", None)
    try:
        pm = get_plugin_manager()
        assert "[fdalign-proto]" in pm.format_listing()
        spec = pm.get_adapter_spec("proto")
        assert spec.distribution == "fdalign-proto"
        task = tiny_task(seed=3)
        adapter = pm.create_adapter("proto").fit(task)
        mix = adapter.chosen_hparams()["mix"]
        assert mix in [i / 10 for i in range(10)]
        keys = normalise(task.support.mean(0))
        protos = normalise(torch.stack([keys[task.support_labels == c].mean(0) for c in range(3)]))
        f = task.val_features
        expected = (1 - mix) * 100 * f @ task.classifier + mix * 100 * f @ protos.T
        assert torch.allclose(adapter.predict(f), expected, rtol=1e-5, atol=1e-5)
    finally:
        sys.modules.pop("fdalign_proto", None)


def test_plugins_md_example_is_complete_and_runs_in_the_bench(tmp_path, monkeypatch, tiny_model_name):
    """Extract the three files of docs/plugins.md §3, install them offline as the page says,
    and run the adapter through the bench runner."""
    import re

    from fdalign_plugins.config import build_config
    from fdalign_plugins.report import write_reports
    from fdalign_plugins.results import read_results
    from fdalign_plugins.runner import BenchConfig, Runner

    text = (REPO / "docs" / "plugins.md").read_text()
    blocks = dict(re.findall(r"<!-- example-file: (\S+) -->\n```\w+\n(.*?)```", text, re.S))
    assert sorted(blocks) == ["fdalign_proto.py", "pyproject.toml", "setup.cfg"]
    source = tmp_path / "fdalign-proto"
    source.mkdir()
    for name, body in blocks.items():
        assert body == (REPO / "docs" / "example_plugin" / name).read_text(), f"{name}: page and package differ"
        (source / name).write_text(body)
    assert "pip install --no-build-isolation ./fdalign-proto" in text
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        check=True, timeout=120, capture_output=True,
    )
    monkeypatch.delenv(plugins.NO_EXTERNAL_ENV, raising=False)
    monkeypatch.syspath_prepend(str(target))
    sys.modules.pop("fdalign_proto", None)
    plugins.reset_plugin_manager()
    try:
        cfg = build_config(BenchConfig, {
            "model": tiny_model_name, "pretrained": "none", "adapters": ["proto"], "encoders": ["clip"], "shots": [1], "seeds": [1],
            "views": 1, "adapter_params": {"proto": {"mix_steps": "5"}},  # typed by the plugin's declaration
            "dataset_options": {"num_classes": 3, "train_per_class": 3, "val_per_class": 2, "test_per_class": 3,
                                "ood_per_class": 2, "image_size": 32}})
        assert cfg.adapter_params == {"proto": {"mix_steps": 5}}
        with pytest.raises(FDAlignError, match=r"adapter 'proto': hyper-parameter mix must lie in \[0, 1\], got 2"):
            build_config(BenchConfig, {"adapter_params": {"proto": {"mix": 2}}})
        summary = Runner(cfg, tmp_path / "run", log=lambda s: None).run()
        assert summary.failed == 0 and summary.written == 2
        recs = read_results(tmp_path / "run")
        proto = [r for r in recs if r["adapter"] == "proto"][0]
        assert proto["hparams"]["mix"] in [i / 5 for i in range(5)] and proto["hparams"]["mix_steps"] == 5
        rows = [line.split("  ")[0] for line in write_reports(recs, tmp_path / "run")["text"].splitlines()]
        assert "proto" in rows  # labelled by its registry name, as the page says
    finally:
        sys.modules.pop("fdalign_proto", None)
        plugins.reset_plugin_manager()


# ----------------------------------------------------------------------- what the core does not name

LABELLED_ADAPTER = GOOD_ADAPTER.replace('    name = "halves"\n', '    name = "halves"\n    label = "Halves!"\n    order = 15\n') \
    .replace("    register(Halves.spec())", "    register(Halves.spec())\n    register(HalvesTwice.spec())") + '''

class HalvesTwice(Halves):  # a subclass with its own name takes none of its parent's table traits
    name = "halves2"
'''


def test_builtin_datasets_come_from_our_entry_point():
    pm = get_plugin_manager(load_external=False)
    assert plugins.BUILTIN_PLUGIN_MODULES == [] and plugins.DATASET_GROUP in pm.own_groups
    assert all(s.distribution == plugins.OWN_DISTRIBUTION for s in pm.list_datasets())
    names = [name for name, _ in pm.list_name_plugin()]
    assert f"{plugins.DATASET_GROUP}:builtin@fdalign-plugins" in names and not any(n.startswith("builtin:") for n in names)


def test_metadata_without_the_dataset_entry_point_still_finds_the_builtins_and_says_so(monkeypatch, capsys):
    real = plugins_registry.metadata.entry_points

    def without_ours(group):
        eps = real(group=group)
        return [ep for ep in eps if group != plugins.DATASET_GROUP or ep.dist is None
                or ep.dist.name.lower() != plugins.OWN_DISTRIBUTION]

    monkeypatch.setattr(plugins_registry.metadata, "entry_points", without_ours)
    pm = get_plugin_manager(load_external=False)
    assert "world" in [s.name for s in pm.list_datasets()]
    err = capsys.readouterr().err
    assert err == ("fdalign-plugins: warning: the installed package metadata has no fdalign.datasets entry points "
                   "(it predates them); loading the built-ins directly. Reinstall (pip install -e .) to refresh it\n")


def test_labels_order_and_the_reference_row_come_from_the_specs(site):
    from fdalign_plugins.bench.context import resolve_adapters
    from fdalign_plugins.report import render_text, summarise

    site.add("fdalign-halves", {"fdalign.adapters": {"halves": "tp_labelled"}}, {"tp_labelled": LABELLED_ADAPTER})
    plugins.reset_plugin_manager()
    specs = {s.name: s for s in plugins.list_adapters()}
    assert (specs["halves"].label, specs["halves"].order, specs["halves"].reference) == ("Halves!", 15, False)
    assert (specs["halves2"].label, specs["halves2"].order) == ("halves2", 1000)  # not inherited
    assert [n for n, s in specs.items() if s.reference] == ["zero-shot"]
    assert resolve_adapters(["halves", "tip"]) == ["zero-shot", "halves", "tip"]  # the reference comes first
    recs = [{"dataset": "d", "adapter": a, "encoder": "clip", "shots": 1, "seed": 1, "acc": {"test": acc},
             "selection": "fixed"} for a, acc in (("tip-f", 61.0), ("halves2", 62.0), ("halves", 63.0),
                                                  ("zero-shot", 60.0), ("tip", 64.0))]
    rows = [ln.split("  ")[0] for ln in render_text(summarise(recs)).splitlines()
            if ln[:1].isalpha() and not ln.startswith("top-1") and ln.split()[-1][0].isdigit()]
    assert rows == ["CLIP (zero-shot)", "Tip", "Halves!", "Tip-F", "halves2"]

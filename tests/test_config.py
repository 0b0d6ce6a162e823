import pytest

from fdalign_plugins.config import FinetuneConfig, build_config, read_yaml, to_dict
from fdalign_plugins.errors import ConfigError


def test_precedence_flags_over_yaml_over_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\nepochs: 7\nkl_direction: reference\naug_scale: [0.5, 1.0]\n")
    cfg = build_config(FinetuneConfig, read_yaml(y), {"epochs": "3", "spurious_weight": None})
    assert cfg.lr == 0.5 and cfg.epochs == 3 and cfg.kl_direction == "reference"
    assert cfg.aug_scale == (0.5, 1.0)
    assert cfg.spurious_weight == FinetuneConfig().spurious_weight  # None = not given
    assert to_dict(cfg)["aug_scale"] == [0.5, 1.0]


def test_unknown_key_lists_valid_keys(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'learning_rate'; valid keys: .*\blr\b"):
        build_config(FinetuneConfig, read_yaml(y))


@pytest.mark.parametrize("key,value,msg", [
    ("shots", "abc", "shots must be an integer"),
    ("shots", 0, "shots must be a positive integer"),
    ("shots", 2.5, "shots must be an integer"),
    ("epochs", -1, "epochs must be a positive integer"),
    ("lr", "fast", "lr must be a number"),
    ("lr", -0.1, "lr must be >= 0"),
    ("kl_direction", "up", "kl_direction must be one of overview, reference"),
    ("spc", "maybe", "spc must be true or false"),
    ("aug_scale", [0.9, 0.1], "aug_scale must be"),
])
def test_bad_values(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config(FinetuneConfig, {key: value})


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(lst)
    assert read_yaml(_empty(tmp_path)) == {}


def _empty(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    return p


# ----------------------------------------------------------------------- deprecated names


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process deprecation lines afresh."""
    from fdalign_plugins import config

    monkeypatch.setattr(config, "_WARNED", set())


def test_beta_is_a_deprecated_name_of_spurious_weight_in_yaml_and_dicts(tmp_path, capsys, fresh_warnings):
    y = tmp_path / "old.yaml"
    y.write_text("beta: 0.25\nepochs: 2\n")
    cfg = build_config(FinetuneConfig, read_yaml(y))
    assert cfg.spurious_weight == 0.25 and "beta" not in to_dict(cfg) and to_dict(cfg)["spurious_weight"] == 0.25
    err = capsys.readouterr().err
    assert err == ("warning: config key 'beta' is deprecated; use config key 'spurious_weight' (FD-Align's "
                   "spurious-loss weight; Tip/APE's beta is their sharpness)\n")
    build_config(FinetuneConfig, {"beta": 0.5}, source="config")  # the same line is not repeated
    assert capsys.readouterr().err == ""
    assert FinetuneConfig(beta=0.75).spurious_weight == 0.75  # code that still passes the old keyword
    assert "FinetuneConfig(beta=...) is deprecated" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^finetune key 'beta' and finetune key 'spurious_weight' are one setting "
                                          r"\(finetune key 'beta' is its deprecated name\); give finetune key "
                                          r"'spurious_weight' only$"):
        build_config(FinetuneConfig, {"beta": 1, "spurious_weight": 2}, source="finetune")
    later = build_config(FinetuneConfig, {"beta": 3.0}, {"spurious_weight": 4.0})  # later layers still win
    assert later.spurious_weight == 4.0


def test_a_method_plugin_reading_the_old_name_gets_the_new_value():
    from fdalign_plugins.specs import MethodSpec, resolve_method

    spec = MethodSpec(name="old-style", summary="reads beta", factory=dict, reads=("alpha", "beta"))
    cfg = build_config(FinetuneConfig, {"spurious_weight": 0.3, "alpha": 2.0})
    assert resolve_method(spec, cfg) == {"alpha": 2.0, "beta": 0.3}


def test_the_deprecated_flags_warn_and_map(tmp_path, capsys, fresh_warnings):
    import hashlib
    import json

    from fdalign_plugins.cli.bench import _bench_config, build_parser
    from fdalign_plugins.cli.finetune import build_parser as finetune_parser
    from fdalign_plugins.cli.common import flag_overrides
    from fdalign_plugins.runner import default_out

    old = _bench_config(build_parser().parse_args(["--beta", "0.5", "--adapter", "tip"]))
    assert capsys.readouterr().err == ("warning: --beta is deprecated; use --spurious-weight (FD-Align's "
                                       "spurious-loss weight; Tip/APE's beta is their sharpness)\n")
    new = _bench_config(build_parser().parse_args(["--spurious-weight", "0.5", "--adapter", "tip"]))
    assert old == new and new.finetune == {"spurious_weight": 0.5}
    # the run folder of a command from before the rename: its hash read the key as beta
    legacy = json.loads(json.dumps({**to_dict(new), "finetune": {"beta": 0.5}}))
    want = hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str).encode()).hexdigest()[:8]
    assert default_out(new).name == f"bench-world-{want}"
    y = tmp_path / "c.yaml"
    y.write_text("finetune: {beta: 0.5, epochs: 3}\n")
    from_yaml = _bench_config(build_parser().parse_args(["--config", str(y), "--spurious-weight", "0.7"]))
    assert from_yaml.finetune == {"spurious_weight": 0.7, "epochs": 3}  # the flag wins over the YAML's old key
    with pytest.raises(ConfigError, match="^--beta and --spurious-weight are one setting"):
        _bench_config(build_parser().parse_args(["--beta", "1", "--spurious-weight", "2"]))
    args = finetune_parser().parse_args(["--beta", "0.2"])
    assert flag_overrides(args, FinetuneConfig) == {"spurious_weight": "0.2"}


def test_every_config_section_lives_in_config_and_sections_merge_key_by_key(fresh_warnings):
    from fdalign_plugins import config, protocols, runner
    from fdalign_plugins.config import BenchConfig, EpisodicConfig

    assert {c.__module__ for c in (BenchConfig, EpisodicConfig, FinetuneConfig)} == {"fdalign_plugins.config"}
    assert runner.BenchConfig is BenchConfig and protocols.EpisodicConfig is EpisodicConfig  # old paths
    yaml_layer = {"finetune": {"epochs": 3, "beta": 0.5}, "dataset_options": {"a": 1},
                  "episodic": {"n_way": 3, "query": 4}}
    flags = {"finetune": {"lr": 0.2, "spurious_weight": 0.7}, "dataset_options": {"b": 2}, "episodic": {"query": 5}}
    cfg = build_config(BenchConfig, yaml_layer, flags, {"seeds": [4]})
    assert cfg.finetune == {"epochs": 3, "lr": 0.2, "spurious_weight": 0.7}  # a later layer wins key by key
    assert cfg.dataset_options == {"a": 1, "b": 2} and cfg.episodic == {"n_way": 3, "query": 5}
    assert cfg.seeds == [4] and set(BenchConfig.SECTIONS) == {"finetune", "episodic", "dataset_options"}
    assert config.BenchConfig.SECTIONS["finetune"] is FinetuneConfig

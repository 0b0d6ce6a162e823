import pytest

from fdalign_plugins.config import FinetuneConfig, build_config, read_yaml, to_dict
from fdalign_plugins.errors import ConfigError


def test_precedence_flags_over_yaml_over_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\nepochs: 7\nkl_direction: reference\naug_scale: [0.5, 1.0]\n")
    cfg = build_config(FinetuneConfig, read_yaml(y), {"epochs": "3", "beta": None})
    assert cfg.lr == 0.5 and cfg.epochs == 3 and cfg.kl_direction == "reference"
    assert cfg.aug_scale == (0.5, 1.0)
    assert cfg.beta == FinetuneConfig().beta  # None = not given
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

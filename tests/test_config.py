"""Config loading: YAML + overrides, unknown keys, wrong types, missing files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from llmkit.config import load_config, parse_overrides, to_dict
from llmkit.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    flags: list[str] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    maybe: int | None = None
    enabled: bool = False


@dataclass
class Other:
    name: str = "o"
    depth: int = 1


@dataclass
class Root:
    inner: Inner = field(default_factory=Inner)
    other: Other = field(default_factory=Other)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "inner:\n  lr: 1e-4\n  steps: 3\n")
    cfg = load_config(
        Root, p, ["--inner.steps", "7", "--depth", "4", "--inner.flags", "a,b", "--enabled", "--maybe=null"]
    )
    assert cfg.inner.lr == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string; coerced to float
    assert cfg.inner.steps == 7
    assert cfg.other.depth == 4  # bare key resolved to its unique section
    assert cfg.inner.flags == ["a", "b"]
    assert cfg.inner.enabled is True and cfg.inner.maybe is None
    assert to_dict(cfg)["inner"]["steps"] == 7


def test_unknown_key_names_it_and_suggests(tmp_path):
    p = write(tmp_path, "inner:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.stepz'.*did you mean 'steps'"):
        load_config(Root, p)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr'"):
        load_config(Root, None, ["--inner.lrr", "1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus'"):
        load_config(Root, None, ["--bogus", "1"])


def test_ambiguous_bare_key():
    with pytest.raises(ConfigError, match="ambiguous.*inner.*other"):
        load_config(Root, None, ["--name", "z"])


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("inner:\n  steps: abc\n", "'inner.steps' must be an integer"),
        ("inner:\n  lr: fast\n", "'inner.lr' must be a number"),
        ("inner:\n  mode: c\n", r"'inner.mode' must be one of \['a', 'b'\]"),
        ("inner:\n  enabled: 3\n", "'inner.enabled' must be true or false"),
        ("inner: 5\n", "'inner' must be a mapping"),
        ("inner:\n  steps: 2.5\n", "'inner.steps' must be an integer"),
    ],
)
def test_wrong_types(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(Root, write(tmp_path, text))


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Root, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, write(tmp_path, "inner: [1,\n"))


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c=2", "--flag", "--d-e", "x"]) == [
        ("a.b", "1"),
        ("c", "2"),
        ("flag", "true"),
        ("d_e", "x"),
    ]
    with pytest.raises(ConfigError, match="unexpected command-line argument 'stray'"):
        parse_overrides(["stray"])


def test_post_init_validation_is_a_config_error():
    from llmkit.train import TrainerConfig

    with pytest.raises(ConfigError, match="per_device_batch_size must be >= 1"):
        load_config(TrainerConfig, None, ["--per_device_batch_size", "0"])


def test_help_lists_every_key_with_type_and_default():
    """`--help` is generated from the dataclasses: exactly the loader's keys, with types, choices and defaults."""
    from llmkit.config import options_help

    text = options_help(Root)
    rows = {line.split()[0]: line for line in text.splitlines()}
    assert list(rows) == [
        "--inner.lr",
        "--inner.steps",
        "--inner.name",
        "--inner.flags",
        "--inner.mode",
        "--inner.maybe",
        "--inner.enabled",
        "--other.name",
        "--other.depth",
    ]
    assert rows["--inner.lr"].endswith("float  (default: 0.001)")
    assert "a|b  (default: 'a')" in rows["--inner.mode"]
    assert "(default: [])" in rows["--inner.flags"]
    for key in rows:  # every listed key is accepted by the loader
        load_config(
            Root, None, [key, {"--inner.mode": "b", "--inner.flags": "[x]", "--inner.enabled": "true"}.get(key, "1")]
        )

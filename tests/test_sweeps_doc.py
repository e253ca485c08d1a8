"""docs/sweeps.md documents exactly the keys the sweep parser accepts; paths resolve against the config file;
dry runs check paths and estimate a time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fasttarget.errors import UserError
from fasttarget.sweep import SweepConfig, describe_plan
from fasttarget.sweep.config import schema

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "sweeps.md"


def documented() -> dict[str, set[str]]:
    """Section title → the keys in the first column of its table."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if m := re.match(r"^## `(.+)`$", line):
            current = sections.setdefault(m.group(1), set())
        elif current is not None and (m := re.match(r"^\| `([a-z_]+)` \|", line)):
            current.add(m.group(1))
    return sections


def test_every_parser_key_is_documented_and_nothing_else():
    assert documented() == schema()


TOML = """
name = "t"
[data]
source = "{source}"
[student]
batch_size = 16
eval_every = 5
seeds = [0]
[model]
width = 0.125
[[grid]]
strategies = ["A"]
student_augs = ["stdaug"]
steps = [10]
"""


def test_relative_paths_are_read_from_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "raw").mkdir()
    config = tmp_path / "configs" / "s.toml"
    config.write_text(TOML.format(source="../raw"))
    monkeypatch.chdir(REPO)  # any other folder
    cfg = SweepConfig.from_toml(config)
    assert cfg.data_source == (tmp_path / "raw").resolve()
    cfg.check_paths()


def test_dry_run_names_a_missing_path_and_estimates_a_time(tmp_path, user_error):
    config = tmp_path / "s.toml"
    config.write_text(TOML.format(source="missing"))
    user_error("sweep config whose source does not exist", "sweep", str(config), "--out", str(tmp_path / "o"),
               "--dry-run", expect=("[data] source", "missing", "does not exist"))
    config.write_text(TOML.format(source="."))
    text = describe_plan(SweepConfig.from_toml(config), tmp_path / "o", workers=2)
    work = re.search(r"= ([\d.]+) M training-image equivalents", text)
    # 1 run × 10 steps × 16 + 2 evaluations × 10k test images × 1/3
    assert work and float(work.group(1)) == pytest.approx((160 + 2 * 10_000 / 3) / 1e6, abs=0.006)
    rate = re.search(r"rate: (\d+) img/s per unit", text)
    assert rate and int(rate.group(1)) > 0 and "on 2 worker(s)" in text
    assert not (tmp_path / "o").exists()


def test_bad_keys_name_the_known_ones(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(TOML.format(source=".").replace("batch_size = 16", "batch = 16"))
    with pytest.raises(UserError, match=r"\[student\]: unknown key\(s\) batch; known: batch_size, compile"):
        SweepConfig.from_toml(config)

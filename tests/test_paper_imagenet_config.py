"""configs/paper-imagenet*.toml: the paper's ImageNet setups parse, validate and plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from fasttarget.sweep import SweepConfig
from fasttarget.sweep.plan import plan_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,arch", [("paper-imagenet", "resnet50"), ("paper-imagenet-vit", "vit_s")])
def test_paper_imagenet_configs_plan_the_papers_runs(name, arch):
    cfg = SweepConfig.from_toml(CONFIGS / f"{name}.toml")
    assert (cfg.dataset, cfg.arch, cfg.width, cfg.device, cfg.teacher.arch) == ("imagenet", arch, 1.0, "cuda", "resnet50")
    targets = next(g for g in cfg.grids if g.name == "targets")
    # Table 6: A/B/C, teachers 12/28/50 %, 1k to 250k steps, 3 seeds.
    assert targets.strategies == ("A", "B", "C") and targets.teacher_accuracies == (0.12, 0.28, 0.5)
    assert targets.steps == (1000, 50000, 150000, 250000) and targets.seeds == (0, 1, 2)
    plan = plan_sweep(cfg)
    assert {acc for _, acc in plan.caches} >= {0.12, 0.28, 0.5}
    if arch == "resnet50":  # Table 7: A vs C over the first 3k steps, with the 62 % teacher too
        early = next(g for g in cfg.grids if g.name == "early")
        assert early.strategies == ("A", "C") and early.steps[-1] == 3000 and 0.62 in early.teacher_accuracies

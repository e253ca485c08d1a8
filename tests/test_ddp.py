"""DDP through torchrun: two gloo processes on CPU train like one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# 50 images per class, global batch 64 (32 per rank under DDP), the narrowest width that trains on CPU.
ARGS = ["train", "--strategy", "A", "--aug", "flip", "--steps", "60", "--eval-every", "30", "--ipc", "50",
        "--batch-size", "64", "--width", "0.125", "--device", "cpu", "--seed", "0", "--no-progress"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(sample_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([BIN / "fasttarget", *ARGS, "--data", sample_dir, "--out", single], env=env, check=True,
                   timeout=900)
    subprocess.run([BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "--no-python", BIN / "fasttarget",
                    *ARGS, "--data", sample_dir, "--out", ddp], env=env, check=True, timeout=900)

    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [30, 60]  # written once, by rank 0
    assert rows[-1]["images_seen"] == 60 * 64

    acc_single = json.loads((single / "final.json").read_text())["test_acc_h"]
    acc_ddp = json.loads((ddp / "final.json").read_text())["test_acc_h"]
    print(f"test top-1 after 60 steps: single process {acc_single:.3f}, 2 gloo ranks {acc_ddp:.3f}")
    # Both learn (chance is 0.10), and agree within the seed-to-seed spread of such short runs.
    assert acc_single > 0.2 and acc_ddp > 0.2
    assert abs(acc_ddp - acc_single) < 0.06

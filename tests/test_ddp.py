"""DDP through torchrun: two gloo processes on CPU train exactly like one process with the same global batch.

Rank ``r`` of ``W`` trains on rows ``r, r+W, …`` of the single process's batch (``loader.epoch_rows``) and
DDP averages the ranks' gradients, so the two runs are one computation in another summation order,
provided nothing couples the samples of a shard: no augmentation (a rank draws a shard's parameters
from the batch's generator, not the single process's) and no BatchNorm (its statistics are per rank).
ViT-S has LayerNorm only, so the losses and weights must agree to float32 rounding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
# 50 images per class, global batch 64 (32 per rank under DDP), a narrow ViT-S (hidden size 48).
ARGS = ["train", "--strategy", "A", "--aug", "noaug", "--arch", "vit_s", "--width", "0.125", "--steps", "4",
        "--eval-every", "2", "--ipc", "50", "--batch-size", "64", "--device", "cpu", "--seed", "0", "--no-progress"]


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_process(sample_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([BIN / "fasttarget", *ARGS, "--data", sample_dir, "--out", single], env=env, check=True,
                   timeout=900)
    subprocess.run([BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "--no-python", BIN / "fasttarget",
                    *ARGS, "--data", sample_dir, "--out", ddp], env=env, check=True, timeout=900)

    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    rows = {run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (single, ddp)}
    assert [r["step"] for r in rows[ddp]] == [2, 4]  # written once, by rank 0
    assert rows[ddp][-1]["images_seen"] == 4 * 64
    for one, two in zip(rows[single], rows[ddp]):
        print(f"step {one['step']}: loss {one['loss']:.7f} (one process) {two['loss']:.7f} (2 ranks), "
              f"test top-1 {one['test_acc_h']:.3f} / {two['test_acc_h']:.3f}")
        for term in ("loss_b", "loss_h", "loss"):  # the global batch's mean, not rank 0's shard's
            assert two[term] == pytest.approx(one[term], rel=1e-5, abs=1e-6)
        assert abs(two["test_acc_h"] - one["test_acc_h"]) <= 0.002  # at most 2 of 1,000 test images flip

    weights = {run: torch.load(run / "checkpoints" / "last.pt", weights_only=False)["student"]
               for run in (single, ddp)}
    assert weights[single].keys() == weights[ddp].keys()
    differences = torch.cat([(weights[ddp][k].float() - weights[single][k].float()).abs().flatten()
                             for k in weights[single]])
    median, p99 = differences.quantile(torch.tensor([0.5, 0.99]), interpolation="higher").tolist()
    print(f"{differences.numel()} weights differ by: median {median:.1e}, 99% {p99:.1e}, max {differences.max():.1e}")
    # AdamW moves a weight by about lr (1e-3) per step however small its gradient, so where the gradient
    # is zero but for rounding (ViT's key bias, 0.2% of the weights: softmax ignores a shift shared by
    # all keys) rounding noise moves it by a fraction of lr; the rest agree to rounding. Ranks training
    # on wrong rows would move most weights apart by a good part of lr.
    assert p99 < 1e-6
    assert differences.max() < 1e-3

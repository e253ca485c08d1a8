"""Strategy C from a top-k cache against the full cache: paired students on real CIFAR-10.

Trains one quick teacher (ResNet-18, plain cross-entropy: a Strategy A run of ``fasttarget.train``),
builds its full float16 cache and a top-K float16 cache (FKD's marginal smoothing) with
``fasttarget.cache``, then trains, for each seed, two students that
differ only in the cache they read (same initialization, data order, augmentation: the seed
fixes all three). Prints each seed's test accuracies and the mean paired difference
(top-K minus full) with its 95 % t interval.

Sized for a 2-core machine (not measured to the end on the loaded one: at load 15 the 300-step
teacher alone took over 8 CPU-minutes): the first ``--train``
images of real CIFAR-10's train split and ``--test`` test images, narrow networks, a few
hundred steps. Run from the repository root:

    PYTHONPATH=src python scripts/topk_vs_full.py --out /tmp/topk-vs-full

Real CIFAR-10 is read from ``../shared/data/cifar-10-batches-bin`` (``--source``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from scipy import stats

from fasttarget.cache import CacheBuildConfig, build_cache
from fasttarget.convert import ConvertConfig, convert
from fasttarget.train import FINAL_MODEL, TrainConfig, train

RECORD = 3073  # CIFAR-10 binary: 1 label byte + 3,072 pixels


def subset_cifar10(source: Path, out: Path, train: int, test: int) -> Path:
    """Convert the first ``train`` / ``test`` records of real CIFAR-10 (train records from batch 1 on)."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    left = train
    for i in range(1, 6):
        take = min(left, 10_000)
        with open(source / f"data_batch_{i}.bin", "rb") as fh:
            (raw / f"data_batch_{i}.bin").write_bytes(fh.read(take * RECORD))
        left -= take
    with open(source / "test_batch.bin", "rb") as fh:
        (raw / "test_batch.bin").write_bytes(fh.read(test * RECORD))
    shutil.copy(source / "batches.meta.txt", raw)
    data = out / "data"
    convert(ConvertConfig("cifar10", raw, data, force=True, progress=False))
    return data


def train_teacher(data: Path, out: Path, steps: int, width: float) -> tuple[Path, float]:
    """A ResNet-18 trained with cross-entropy on stdaug views by :func:`fasttarget.train.train`.

    A Strategy A run with one head (``loss="coupled"``) at temperature 1: its loss, KL to the
    one-hot label plus cross-entropy, is twice the cross-entropy, which AdamW steps as the plain
    cross-entropy. Returns the run's ``final.pt`` (a teacher checkpoint) and its test accuracy.
    """
    final = train(TrainConfig(data=data, out=out, strategy="A", aug="stdaug", steps=steps, eval_every=steps,
                              seed=100, width=width, loss="coupled", temperature=1.0, lr=2e-3, weight_decay=0.01,
                              device="cpu", force=True, progress=False))
    return out / FINAL_MODEL, final["test_acc_h"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/cifar-10-batches-bin"))
    parser.add_argument("--train", type=int, default=10_000, help="train images (first ones of real CIFAR-10)")
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--teacher-width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=300, help="student steps")
    parser.add_argument("--width", type=float, default=0.125, help="student width")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data = subset_cifar10(args.source, args.out, args.train, args.test)
    teacher, teacher_accuracy = train_teacher(data, args.out / "teacher", args.teacher_steps, args.teacher_width)
    print(f"teacher: ResNet-18 x{args.teacher_width}, {args.teacher_steps} steps, test accuracy {teacher_accuracy:.4f}", flush=True)
    caches = {}
    for name, top_k in (("full", None), (f"top{args.top_k}", args.top_k)):
        caches[name] = build_cache(CacheBuildConfig(data, teacher, args.out / f"{name}.h5", top_k=top_k,
                                                    dtype="float16", batch_size=500, device="cpu",
                                                    progress=False)).path
    rows = []
    for seed in args.seeds:
        accuracy = {}
        for name, cache in caches.items():
            final = train(TrainConfig(data=data, out=args.out / "runs" / f"{name}-seed{seed}", strategy="C",
                                      cache=cache, steps=args.steps, eval_every=args.steps, seed=seed,
                                      width=args.width, device="cpu", force=True, progress=False))
            accuracy[name] = final["test_acc_h"]
        rows.append(accuracy)
        print(f"seed {seed}: full {accuracy['full']:.4f}  top-{args.top_k} {accuracy[f'top{args.top_k}']:.4f}  "
              f"difference {accuracy[f'top{args.top_k}'] - accuracy['full']:+.4f}", flush=True)
    diffs = [r[f"top{args.top_k}"] - r["full"] for r in rows]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 \
        else float("nan")
    print(f"mean paired difference (top-{args.top_k} - full) over {len(diffs)} seeds: {mean:+.4f}, "
          f"95% t interval [{mean - half:+.4f}, {mean + half:+.4f}]  ({time.perf_counter() - started:.0f} s)")
    (args.out / "summary.json").write_text(json.dumps({"teacher_accuracy": teacher_accuracy, "runs": rows,
                                                       "mean_difference": mean, "ci95_half_width": half,
                                                       "args": {k: str(v) for k, v in vars(args).items()}}) + "\n")


if __name__ == "__main__":
    main()

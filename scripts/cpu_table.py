"""Student accuracy by strategy and teacher accuracy on a CPU: the training engine's acceptance table.

Trains one teacher ladder, then students A, B and C (one per reached teacher) to the same
step budget, and writes ``OUT/table.md``. Every stage is resumable: rerunning the same
command reuses the ladder and finished runs.

Usage (real CIFAR-10, converted with ``fasttarget convert``)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cpu_table.py --data /tmp/c10 --out runs/cpu-table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fasttarget.teacher import LADDER_FILE, LadderConfig, teacher_filename, train_ladder
from fasttarget.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="converted dataset directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--accuracies", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--teacher-width", type=float, default=0.125)
    parser.add_argument("--teacher-aug", default="flip")
    parser.add_argument("--teacher-eval-every", type=int, default=50)
    parser.add_argument("--teacher-max-steps", type=int, default=3000)
    parser.add_argument("--width", type=float, default=0.125, help="student width")
    parser.add_argument("--aug", default="stdaug", help="student augmentation")
    parser.add_argument("--steps", type=int, default=300, help="student step budget")
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    ladder_dir = args.out / "teachers"
    if (ladder_dir / LADDER_FILE).is_file():
        ladder = json.loads((ladder_dir / LADDER_FILE).read_text())
    else:
        train_ladder(LadderConfig(
            data=args.data, out=ladder_dir, accuracies=tuple(args.accuracies), aug=args.teacher_aug,
            width=args.teacher_width, eval_every=args.teacher_eval_every, max_steps=args.teacher_max_steps,
            seed=args.seed, device="cpu",
        ))
        ladder = json.loads((ladder_dir / LADDER_FILE).read_text())
    reached = {r["target"]: r for r in ladder["rungs"] if r["target"] is not None}

    common = dict(data=args.data, aug=args.aug, steps=args.steps, eval_every=args.eval_every, seed=args.seed,
                  width=args.width, device="cpu", resume=True)
    results = {"A": train(TrainConfig(out=args.out / "A", strategy="A", **common))}
    for target, rung in reached.items():
        teacher = ladder_dir / teacher_filename(target)
        for strategy in ("B", "C"):
            results[strategy, target] = train(TrainConfig(out=args.out / f"{strategy}-{target:g}", strategy=strategy,
                                                          teacher=teacher, **common))

    lines = [
        f"Student top-1 (h) on the CIFAR-10 test split after {args.steps} steps (batch 128, {args.aug}, "
        f"ResNet-18 width {args.width}, seed {args.seed}); teachers: width {args.teacher_width}, "
        f"{args.teacher_aug}, saved at the first evaluation reaching each target.",
        "",
        "| teacher (measured) | step saved | A | B | C | g-head A / B / C |",
        "|---|---|---|---|---|---|",
    ]
    a = results["A"]
    for target, rung in reached.items():
        b, c = results["B", target], results["C", target]
        lines.append(
            f"| {target:.0%} ({rung['accuracy']:.2%}) | {rung['step']} | {a['test_acc_h']:.2%} | "
            f"{b['test_acc_h']:.2%} | {c['test_acc_h']:.2%} | "
            f"{a['test_acc_g']:.2%} / {b['test_acc_g']:.2%} / {c['test_acc_g']:.2%} |"
        )
    if ladder["missed"]:
        lines.append(f"\nMissed teacher targets: {ladder['missed']} (best {ladder['best_accuracy']:.2%}).")
    lines.append(f"\nTotal wall time of this invocation: {time.perf_counter() - started:.0f} s.")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

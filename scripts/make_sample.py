"""Make the offline demo sample shipped in ``data/cifar10-sample/``.

Draws a stratified sample from the real CIFAR-10 (official binary layout): ``--train-per-class``
training and ``--test-per-class`` test images of every class, chosen by a seeded per-class
permutation and kept in their source order. Writes them in the same binary layout
(``data_batch_1.bin`` … ``data_batch_5.bin``, ``test_batch.bin``, ``batches.meta.txt``) plus a
README with provenance and SHA-256 sums.

Run from the repository root:

    .venv/bin/python scripts/make_sample.py --source ../shared/data/cifar-10-batches-bin
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

RECORD = 3073  # 1 label byte + 3,072 pixel bytes
TRAIN_BATCHES = 5

README = """# CIFAR-10 sample for the offline demo

A stratified sample of the real CIFAR-10 image set in the official *binary* layout, so that
`fasttarget demo` runs on a fresh machine without a download.

- `cifar-10-batches-bin/data_batch_1.bin` … `data_batch_{batches}.bin`: {train} training images
  ({train_pc} per class), `test_batch.bin`: {test} test images ({test_pc} per class). Each record is
  3,073 bytes: the label byte, then the 1,024 red, 1,024 green and 1,024 blue bytes (rows of 32).
- `batches.meta.txt`: the class names in label order.

How it was made: `python scripts/make_sample.py --source {source_name} --seed {seed}` took, for each class,
the first images of a random permutation (numpy `default_rng({seed})`) of that class's records in
`{source_name}` (the project's real CIFAR-10, 50,000 / 10,000 images, decoded from a lossless
mirror of the official set; see that folder's README) and wrote them in their original order.

SHA-256:
```
{sums}
```
"""


def sample_records(records: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` records of every label, in their original order."""
    labels = records[:, 0]
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    short = [c for c, k in enumerate(keep) if len(k) < per_class]
    if short:
        raise SystemExit(f"classes {short} have fewer than {per_class} records")
    return records[np.sort(np.concatenate(keep))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/cifar-10-batches-bin"))
    parser.add_argument("--out", type=Path, default=Path("data/cifar10-sample"))
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    def read(names: list[str]) -> np.ndarray:
        return np.concatenate([np.fromfile(args.source / n, np.uint8).reshape(-1, RECORD) for n in names])

    rng = np.random.default_rng(args.seed)
    train = sample_records(read([f"data_batch_{i}.bin" for i in range(1, 6)]), args.train_per_class, rng)
    test = sample_records(read(["test_batch.bin"]), args.test_per_class, rng)

    layout = args.out / "cifar-10-batches-bin"
    layout.mkdir(parents=True, exist_ok=True)
    files = []
    for i, part in enumerate(np.array_split(train, TRAIN_BATCHES), start=1):
        part.tofile(layout / f"data_batch_{i}.bin")
        files.append(f"data_batch_{i}.bin")
    test.tofile(layout / "test_batch.bin")
    shutil.copyfile(args.source / "batches.meta.txt", layout / "batches.meta.txt")
    files += ["test_batch.bin", "batches.meta.txt"]

    sums = "\n".join(f"{hashlib.sha256((layout / f).read_bytes()).hexdigest()}  {f}" for f in files)
    (args.out / "README.md").write_text(README.format(
        batches=TRAIN_BATCHES, train=len(train), train_pc=args.train_per_class, test=len(test),
        test_pc=args.test_per_class, source_name=args.source, seed=args.seed, sums=sums,
    ))
    print(f"wrote {len(train)} train + {len(test)} test records to {layout}")


if __name__ == "__main__":
    main()

"""Holding out a test split from a dataset that has none (``fasttarget convert --val-fraction F``).

An image folder as users often have it holds only class folders (``<class>/*`` or
``train/<class>/*``) and no ``val/``. :func:`hold_out_test_split` moves a seeded,
stratified share of every class's images into the test split: the training rows are the
fraction ``1 - F`` subset of :func:`fasttarget.subsets.select_subset` (each class's rows in
a seeded order, ``ceil((1 - F) * n)`` of them kept), so every class keeps at least one
training image and the same seed always picks the same images. ``meta.json`` records the
fraction, the seed and a SHA-256 of the held-out files' names (``extra["holdout"]``), so a
later conversion can be checked to have held out the very same images.

Example:
    >>> import numpy as np
    >>> from fasttarget.sources import Source, Split
    >>> train = Split(np.repeat(np.arange(2), 10), images=np.zeros((20, 4, 4, 3), np.uint8))
    >>> empty = Split(np.empty(0, np.int64), images=np.zeros((0, 4, 4, 3), np.uint8))
    >>> src = hold_out_test_split(Source("toy", "toy", Path("."), ("a", "b"), train, empty), 0.2, seed=0)
    >>> np.bincount(src.train.labels).tolist(), np.bincount(src.test.labels).tolist(), src.extra["holdout"]["seed"]
    ([8, 8], [2, 2], 0)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from fasttarget.errors import UserError
from fasttarget.sources import Source
from fasttarget.subsets import SubsetConfig, select_subset


def check_val_fraction(fraction: float | None) -> None:
    """Raise a :class:`UserError` unless ``fraction`` is ``None`` or in ``(0, 1)``."""
    if fraction is not None and not 0 < fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), e.g. 0.1 for a 10% test split, got {fraction}")


def hold_out_test_split(source: Source, fraction: float | None, seed: int = 0) -> Source:
    """``source`` with a test split held out of its training images when ``fraction`` is given.

    Args:
        source: as read by :func:`fasttarget.sources.open_source`.
        fraction: share of every class to hold out, in ``(0, 1)``; ``None`` keeps ``source`` as it is.
        seed: fixes which images are held out.

    Returns:
        The source to convert; with ``fraction``, its ``extra["holdout"]`` is the record for ``meta.json``.

    Raises:
        UserError: ``fraction`` is given but the source has a test split, or it is not given and
            the source has none, or it is too small to hold out a single image.
    """
    check_val_fraction(fraction)
    if fraction is None:
        if not len(source.test):
            raise UserError(f"{source.path} has no test images (no val/ or test/ folder): pass --val-fraction F "
                            "to hold out a stratified share F of every class as the test split")
        return source
    if len(source.test):
        raise UserError(f"{source.path} already has a test split ({len(source.test)} images): "
                        "drop --val-fraction to use it")
    labels = source.train.labels
    keep = select_subset(labels, SubsetConfig(fraction=1 - fraction, seed=seed))
    held = np.setdiff1d(np.arange(len(labels)), keep)
    if not len(held):
        raise UserError(f"--val-fraction {fraction} holds out no image of {source.path} (its largest class has "
                        f"{np.bincount(labels).max()} images): raise it")
    test = source.train.subset(held)
    record = {
        "fraction": fraction,
        "seed": seed,
        "method": "per class, all but ceil((1 - fraction) * n) images of a seeded order (fasttarget.holdout)",
        "test_files_sha256": _names_sha256(source, held),
    }
    layout = f"{source.layout}, test held out ({fraction:g}, seed {seed})"
    return dataclasses.replace(source, layout=layout, train=source.train.subset(keep), test=test,
                               extra={**source.extra, "holdout": record})


def _names_sha256(source: Source, rows: np.ndarray) -> str:
    """SHA-256 of the held-out samples' names: file paths relative to the source, or row numbers."""
    files = source.train.files
    names = ([Path(files[i]).relative_to(source.path).as_posix() for i in rows] if files is not None
             else [f"row {i}" for i in rows])
    return hashlib.sha256("\n".join(names).encode()).hexdigest()

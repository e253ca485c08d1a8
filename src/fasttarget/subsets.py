"""Images-per-class (IPC) and fraction subsets as index lists into a split.

A subset is never a new file: it is the sorted row numbers to train on. Selection is
stratified by class and nested: for one seed every class's rows are put in a fixed random
order and a subset takes the first ``n`` of them, so IPC 10 ⊂ IPC 50 ⊂ IPC 100 (and
fraction 0.1 ⊂ 0.5) — scaling curves then compare like with like.

Example:
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(3), 20)
    >>> small = select_subset(labels, SubsetConfig(ipc=2, seed=1))
    >>> large = select_subset(labels, SubsetConfig(ipc=5, seed=1))
    >>> len(small), len(large), bool(np.isin(small, large).all())
    (6, 15, True)
    >>> np.bincount(labels[select_subset(labels, SubsetConfig(fraction=0.5))]).tolist()
    [10, 10, 10]
"""

from __future__ import annotations

import math

import numpy as np

from fasttarget.config import SubsetConfig
from fasttarget.errors import UserError


def select_subset(labels: np.ndarray, cfg: SubsetConfig) -> np.ndarray:
    """Sorted int64 row numbers of the subset ``cfg`` of a split with these labels.

    Args:
        labels: int ``[N]``, the split's labels in row order.
        cfg: the subset.

    Raises:
        UserError: a class has fewer than ``cfg.ipc`` rows.
    """
    labels = np.asarray(labels)
    if cfg.is_full:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    chosen = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        rows = np.flatnonzero(labels == c)
        # Drawn for every class, even an empty one, so that one class's size never shifts another's order.
        order = rows[rng.permutation(len(rows))]
        if cfg.ipc is not None:
            if len(rows) < cfg.ipc:
                raise UserError(f"class {c} has only {len(rows)} images, fewer than --ipc {cfg.ipc}: "
                                f"choose --ipc {len(rows)} or less")
            n = cfg.ipc
        else:
            # Rounded first so that float noise (0.07 * 100 = 7.000000000000001) does not add a row.
            n = math.ceil(round(cfg.fraction * len(rows), 6))
        chosen.append(order[:n])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, np.int64)

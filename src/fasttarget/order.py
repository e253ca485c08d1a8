"""Sample orders: one permutation per epoch, or a stream of permutations cut into batches.

The paper trains every subset with batch 128, even IPC 10 of CIFAR-10 (100 images, less
than one batch). With per-epoch batches and ``drop_last`` such a subset yields no batch at
all, and capping the batch at the subset's size changes the optimisation (a different
batch size, and every step one whole pass). The *stream* order keeps the batch: it
concatenates a fresh permutation of the pool per data epoch, ``perm(0) ‖ perm(1) ‖ …``, and
cuts batches from that sequence, so a batch may end one data epoch and begin the next.
Every sample appears exactly once in each permutation's stretch of the stream; a batch of
128 drawn from 100 images repeats 28 of them, from the next permutation.

The loader still walks *passes* (what ``iter()`` yields and ``state_dict`` counts): a pass of
the stream is :func:`stream_batches` batches, about one data epoch (at least one batch), and
pass ``e`` is the stream from position ``e × batches × global batch`` on. Every position is a
pure function of ``(seed, position)``, so any pass can be recomputed alone and a run
resumes mid-stream exactly.

Example:
    >>> pool = np.arange(5)
    >>> first = stream_rows(pool, seed=0, epoch=0, shuffle=True, batch_size=4)
    >>> second = stream_rows(pool, seed=0, epoch=1, shuffle=True, batch_size=4)
    >>> len(first), stream_batches(5, 4)  # two batches of 4 per pass over 5 samples
    (8, 2)
    >>> whole = np.concatenate([first, second])  # 16 positions: permutations 0, 1, 2 and a bit of 3
    >>> [sorted(whole[k * 5 : (k + 1) * 5].tolist()) for k in range(3)]
    [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
"""

from __future__ import annotations

import math

import numpy as np

# First word of the order's seed sequences, so order and augmentation streams never coincide.
ORDER_STREAM = 0x0D


def permuted(pool: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Data epoch ``epoch``'s order of ``pool``: a permutation drawn from ``(seed, epoch)``,
    or ``pool`` itself without ``shuffle``."""
    if not shuffle:
        return pool
    return np.random.default_rng(np.random.SeedSequence([ORDER_STREAM, seed, epoch])).permutation(pool)


def stream_batches(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Batches per rank in one pass of the stream: about one data epoch, at least one.

    Example:
        >>> stream_batches(100, 128), stream_batches(500, 128), stream_batches(50_000, 128, world_size=2)
        (1, 4, 196)
    """
    return max(1, math.ceil(num_samples / (batch_size * world_size)))


def stream_rows(
    pool: np.ndarray, *, seed: int, epoch: int, shuffle: bool, batch_size: int, rank: int = 0, world_size: int = 1,
) -> np.ndarray:
    """The rows one rank visits in pass ``epoch`` of the stream, in batch order.

    Global batch ``k`` of the pass is ``world_size × batch_size`` consecutive stream
    positions; rank ``r`` takes every ``world_size``-th of them from ``r`` on, so ranks
    share each global batch as :func:`fasttarget.loader.epoch_rows` shares an epoch.

    Args:
        pool: int64 ``[M]`` the rows to draw from (the whole split or a subset).

    Returns:
        int64 ``[stream_batches(M, batch_size, world_size) × batch_size]`` rows, a new array.
    """
    n = len(pool)
    span = stream_batches(n, batch_size, world_size) * batch_size * world_size
    start, stop = epoch * span, (epoch + 1) * span
    first, last = start // n, -(-stop // n)
    stream = np.concatenate([permuted(pool, seed=seed, epoch=k, shuffle=shuffle) for k in range(first, last)])
    rows = stream[start - first * n : stop - first * n]
    return rows[rank::world_size].copy()

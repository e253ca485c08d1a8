"""Keeping the caller's CPU thread counts when ffcv is used.

ffcv sets thread counts as a side effect: importing ``ffcv.pipeline.compiler`` calls
``torch.set_num_threads(1)``, and building or iterating an ``ffcv.loader.Loader`` calls
``torch.set_num_threads(num_workers)`` and ``numba.set_num_threads(num_workers)`` in the
calling thread. A process that chose its threads (a sweep worker given one core, a user's
trainer) would silently get others: on this 2-core machine two sweep workers whose torch
had been switched back to 2 OpenMP threads each trained 5-7x slower than with one. Every
fasttarget call into ffcv runs inside :func:`kept_threads`.

Example:
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with kept_threads():
    ...     torch.set_num_threads(1)  # what ffcv does
    >>> torch.get_num_threads() == before
    True
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def kept_threads() -> Iterator[None]:
    """Restore torch's intra-op and numba's thread counts of the calling thread on exit."""
    import torch  # here, so that importing fasttarget.dataset stays light

    torch_threads = torch.get_num_threads()
    numba = sys.modules.get("numba")  # only if already imported: never import it for this
    numba_threads = numba.get_num_threads() if numba is not None else None
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        numba = sys.modules.get("numba")
        if numba is not None:
            # numba imported inside the block starts at its default: the caller's torch count
            # is the budget the caller chose, so it bounds numba's too.
            wanted = numba_threads if numba_threads is not None else min(torch_threads, numba.config.NUMBA_NUM_THREADS)
            if numba.get_num_threads() != wanted:
                numba.set_num_threads(wanted)

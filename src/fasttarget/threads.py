"""Keeping the caller's CPU thread counts when ffcv is used.

ffcv sets thread counts as a side effect: importing ``ffcv.pipeline.compiler`` calls
``torch.set_num_threads(1)``, and building or iterating an ``ffcv.loader.Loader`` calls
``torch.set_num_threads(num_workers)`` and ``numba.set_num_threads(num_workers)`` in the
calling thread. A process that chose its threads (a sweep worker given one core, a user's
trainer) would silently get others: on this 2-core machine two sweep workers whose torch
had been switched back to 2 OpenMP threads each trained 5-7x slower than with one. Every
fasttarget call into ffcv runs inside :func:`kept_threads`.

numba's parallel kernels (ffcv's decoders, fasttarget's fused StdAug kernel) and torch's
intra-op pool are two thread runtimes on the same cores; with numba on TBB (its default when
TBB is installed) the two spin against each other and a CPU training step lost 12 % to it
(`fasttarget bench step`: loader overhead 12 % against 0-1 % with OpenMP for both).
:func:`prefer_openmp` therefore points numba at its OpenMP layer, unless the user chose a
layer (``NUMBA_THREADING_LAYER``) or numba already started its threads.

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
import functools
from typing import Iterator

from fasttarget.numba_cache import cache_typed_dict


@functools.cache  # once per process: the layer is fixed when numba first starts its threads
def prefer_openmp() -> None:
    """Use numba's OpenMP threading layer (torch's runtime) if nothing chose another yet."""
    try:
        import numba
        from numba.np.ufunc import omppool  # noqa: F401  (the layer exists in this build)
    except ImportError:
        return
    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "omp"


@contextlib.contextmanager
def kept_threads() -> Iterator[None]:
    """Restore torch's intra-op and numba's thread counts of the calling thread on exit."""
    import torch  # here, so that importing fasttarget.dataset stays light

    import numba  # ffcv's own dependency: present wherever ffcv is

    prefer_openmp()
    cache_typed_dict()  # every ffcv import runs in here: its import-time compilation is then cached
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        if numba.get_num_threads() != numba_threads:
            numba.set_num_threads(numba_threads)

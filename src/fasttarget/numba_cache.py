"""Keeping the numba compilation that importing ffcv costs between processes.

``import ffcv`` builds a numba typed ``Dict`` at module level (``ffcv.fields.rgb_image.IMAGE_MODES``)
and fills it; that compiles numba's typed-dict helpers (``numba.typed.typeddict._make_dict``,
``_setitem``, …) for ``str -> int`` in every new process, seconds of each command that reads
a beton. The helpers are plain ``@njit`` dispatchers without ``cache=True``;
:func:`cache_typed_dict` turns numba's on-disk cache on for them, exactly what ``cache=True``
would have done, so later processes load the compiled code. numba keys each entry by the
helper's source file stamp and signature and stores it in ``__pycache__`` beside numba's
source, or in the user's cache directory when that is read-only (``NUMBA_CACHE_DIR``, if the
user sets it, wins). No environment variable is set: the cache is a property of these
dispatchers, not of the process.

What numba cannot cache: the functions ffcv compiles for each ``Loader`` pipeline
(``ffcv.pipeline.compiler.Compiler.compile``) call its C decoder and ``memcpy`` through
ctypes function pointers, which numba embeds as process-specific addresses ("dynamic
globals") and refuses to cache; fasttarget's own numba kernels use ``cache=True``.

Example:
    >>> cache_typed_dict()
    >>> from numba.typed import typeddict
    >>> typeddict._setitem._cache.__class__.__name__
    'FunctionCache'
"""

from __future__ import annotations

import functools

# The module-level @njit helpers of numba.typed.typeddict (numba 0.5x-0.6x) a typed Dict calls.
_TYPED_DICT_HELPERS = ("_make_dict", "_length", "_setitem", "_getitem", "_delitem", "_contains", "_get",
                       "_setdefault", "_iter", "_popitem", "_copy")


@functools.cache  # once per process
def cache_typed_dict() -> None:
    """Turn on numba's on-disk cache for its typed-dict helpers (see the module docstring)."""
    try:
        from numba.typed import typeddict
    except ImportError:
        return
    for name in _TYPED_DICT_HELPERS:
        helper = getattr(typeddict, name, None)
        if hasattr(helper, "enable_caching"):  # another numba may have renamed one; it then just compiles
            helper.enable_caching()

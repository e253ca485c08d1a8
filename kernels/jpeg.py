"""Crop-and-resize of one stored image, decoding only what the box needs (``jpeg_crop.c``).

An FFCV ``RGBImageField`` sample is JPEG bytes or raw RGB pixels with its height and width in
the metadata. :func:`decode_crop` turns one sample and a box ``(x0, y0, w, h)`` in stored pixels
into the box resized to an output size, RGB uint8, in a caller's buffer. For JPEG it decodes
less than a full decode: libjpeg-turbo's DCT-domain scaling at the smallest of 1/8, 1/4, 1/2 that
keeps the scaled box at least as large as the output (the scales with SIMD IDCTs), only the iMCU columns the box covers
(``jpeg_crop_scanline``), skipping the rows above it (``jpeg_skip_scanlines``) and stopping after
its last row. The resize is PIL's ``BILINEAR`` filter (a triangle whose support widens with the
downscale factor, i.e. antialiased), applied to the box's own pixels as PIL's
``crop(box).resize(size)`` does. Grayscale JPEGs come out RGB; a corrupt stream, a CMYK stream or
an empty box gives a nonzero status (:class:`DecodeError` from :func:`decode_crop`), never a crash.

Plain reference: :func:`decode_crop_reference` (PIL full decode, ``convert("RGB")``, crop,
resize BILINEAR). ``tests/test_jpeg.py`` states and tests how close the two are.

The C source is compiled on first use (``cc -O3 ... -ljpeg``) into a cache directory keyed by a
hash of the source, and loaded with ctypes; ctypes releases the GIL, the C code keeps no global
state, and :data:`ctypes_function` ``()`` can be called from numba ``@njit`` code (as FFCV calls
its own ``libffcv``), which is how :mod:`fasttarget.decode` runs it over a batch in ``prange``.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    >>> raw = decode_crop(rgb.reshape(-1), "raw", 48, 64, (8, 4, 32, 40), (10, 8))
    >>> raw.shape, raw.dtype
    ((10, 8, 3), dtype('uint8'))
    >>> buf = io.BytesIO(); Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    >>> jpg = np.frombuffer(buf.getvalue(), np.uint8)
    >>> decode_crop(jpg, "jpg", 48, 64, (8, 4, 32, 40), (10, 8)).shape
    (10, 8, 3)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fasttarget.errors import UserError

SOURCE = Path(__file__).with_name("jpeg_crop.c")
CFLAGS = ("-O3", "-shared", "-fPIC", "-std=c99", "-D_DEFAULT_SOURCE")
LIBS = ("-ljpeg", "-lm")
#: FFCV's ``RGBImageField`` modes (``ffcv.fields.rgb_image.IMAGE_MODES``).
MODES = {"jpg": 0, "raw": 1}
#: The C kernel's nonzero statuses.
STATUS = {1: "empty or invalid box", 2: "corrupt or truncated JPEG stream", 3: "out of memory",
          4: "CMYK/YCCK JPEG (convert to RGB when writing)", 5: "unknown storage mode"}

_lock = threading.Lock()
_libraries: dict[Path | None, ctypes.CDLL] = {}  # by cache_dir as passed: the source is hashed once


class DecodeError(ValueError):
    """A sample the kernel could not decode (its status is in ``status``)."""

    def __init__(self, status: int):
        super().__init__(f"decode_crop failed: {STATUS.get(status, f'status {status}')}")
        self.status = status


def default_cache_dir() -> Path:
    """Where compiled kernels go unless the caller names a directory: ``_build/`` beside the source."""
    return SOURCE.parent / "_build"


def build_library(cache_dir: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Compile ``jpeg_crop.c`` (once per source hash) and load it.

    Args:
        cache_dir: directory for the shared object; default :func:`default_cache_dir`.

    Raises:
        UserError: no C compiler or no libjpeg headers/library (with the package to install).
    """
    given = None if cache_dir is None else Path(cache_dir)
    lib = _libraries.get(given)
    if lib is not None:
        return lib
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS + LIBS).encode()).hexdigest()[:16]
    target = (given or default_cache_dir()) / f"jpeg_crop-{key}.so"
    with _lock:
        if given in _libraries:
            return _libraries[given]
        if not target.exists():
            _compile(target)
        lib = ctypes.CDLL(str(target))
        fn = lib.ft_decode_crop
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        lib.ft_store_status.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32]
        lib.ft_store_status.restype = None
        lib.ft_scale_num.argtypes = [ctypes.c_int] * 4
        lib.ft_scale_num.restype = ctypes.c_int
        _libraries[given] = lib
        return lib


def _compile(target: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise UserError("no C compiler (cc) found to build the JPEG crop kernel: install gcc "
                        "(apt-get install gcc libjpeg62-turbo-dev)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a unique name and rename: concurrent first uses never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS], capture_output=True, text=True)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip())
            raise UserError(f"cannot build the JPEG crop kernel ({first.strip()}): install libjpeg-turbo's "
                            "headers (apt-get install libjpeg62-turbo-dev)")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ctypes_function(cache_dir: str | os.PathLike | None = None):
    """The C entry point ``ft_decode_crop`` as a ctypes function (numba can call it in ``@njit``).

    Its arguments: ``data`` pointer, ``size``, ``mode`` (0 jpg, 1 raw), ``height``, ``width``,
    pointer to an int32 ``(x0, y0, w, h)`` box, ``dst`` pointer (``out_h*out_w*3`` bytes),
    ``out_h``, ``out_w``, ``min_scale_num`` (1: choose the DCT scale; 8: always full scale).
    Returns 0 or a status of :data:`STATUS`.
    """
    return build_library(cache_dir).ft_decode_crop


def scale_num(box_w: int, box_h: int, out_w: int, out_h: int) -> int:
    """The DCT scale numerator (of 8) the kernel decodes a ``box_w x box_h`` box at for that output.

    Example:
        >>> scale_num(500, 375, 224, 224), scale_num(500, 460, 224, 224), scale_num(500, 500, 60, 60)
        (8, 4, 1)
    """
    return int(build_library().ft_scale_num(box_w, box_h, out_w, out_h))


def decode_crop(data: np.ndarray, mode: str, height: int, width: int, box: Sequence[int],
                size: Sequence[int], out: np.ndarray | None = None, full_scale: bool = False,
                cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """One stored sample's box, resized to ``size``, as RGB uint8 ``[out_h, out_w, 3]``.

    Args:
        data: uint8 bytes of the sample: a JPEG stream (``mode="jpg"``) or ``height*width*3``
            RGB bytes (``mode="raw"``).
        mode: ``"jpg"`` or ``"raw"``.
        height, width: the stored image's size.
        box: ``(x0, y0, w, h)`` in stored pixels (clipped to the image).
        size: output ``(out_h, out_w)``.
        out: optional C-contiguous uint8 ``[out_h, out_w, 3]`` buffer to write into.
        full_scale: decode at full resolution (no DCT scaling), for comparisons.
        cache_dir: where the compiled kernel lives (:func:`build_library`).

    Raises:
        DecodeError: corrupt stream, CMYK stream, empty box.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out_h, out_w = (int(s) for s in size)
    if out is None:
        out = np.empty((out_h, out_w, 3), np.uint8)
    if out.dtype != np.uint8 or out.shape != (out_h, out_w, 3) or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 {(out_h, out_w, 3)}, got {out.dtype} {out.shape}")
    box_arr = np.ascontiguousarray(box, dtype=np.int32)
    status = ctypes_function(cache_dir)(data.ctypes.data, data.size, MODES[mode], int(height), int(width),
                                        box_arr.ctypes.data, out.ctypes.data, out_h, out_w, 8 if full_scale else 1)
    if status:
        raise DecodeError(status)
    return out


def decode_crop_reference(data: np.ndarray, mode: str, height: int, width: int, box: Sequence[int],
                          size: Sequence[int]) -> np.ndarray:
    """The plain reference: PIL's full decode (``convert("RGB")``), ``crop(box)``, ``resize`` BILINEAR.

    Example:
        >>> rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
        >>> decode_crop_reference(rgb.reshape(-1), "raw", 4, 4, (0, 0, 4, 4), (4, 4)).tolist() == rgb.tolist()
        True
    """
    import io

    from PIL import Image

    if mode == "jpg":
        image = Image.open(io.BytesIO(np.asarray(data, np.uint8).tobytes())).convert("RGB")
    else:
        image = Image.fromarray(np.asarray(data, np.uint8).reshape(height, width, 3))
    x0, y0, w, h = (int(v) for v in box)
    x1, y1 = min(x0 + w, width), min(y0 + h, height)
    x0, y0 = max(x0, 0), max(y0, 0)
    crop = image.crop((x0, y0, x1, y1)).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return np.asarray(crop)

"""FFCV decoding of ``RGBImageField`` samples at crop boxes planned by fasttarget, not by FFCV.

FFCV's ``RandomResizedCropRGBImageDecoder`` draws each box from its own RNG, which ignores seeds
(ffcv issue #392), and decodes the whole JPEG before cropping. :class:`PlannedCropDecoder` is the
image pipeline's decoder instead: it reads each sample's box from a table the loader fills before
the epoch and cuts it with :mod:`fasttarget.kernels.jpeg` (DCT-scaled, row- and column-limited
libjpeg-turbo decode, triangle resize), so a seeded planner, the batch's ``AugRecord`` and the
pixels agree.

Contract with the loader:

- the loader owns ``boxes``, a C-contiguous writable int32 ``[rows_in_beton, 4]`` table of
  ``(x0, y0, w, h)`` in stored-image pixels, indexed by beton row; it fills the rows of the
  coming epoch *before* iterating it (the decoder reads the table in place, by address, while it
  decodes: never rebind or reallocate it, write into it);
- it builds the image pipeline as ``[PlannedCropDecoder(boxes, (out_h, out_w)), ...]``; the decoder
  yields uint8 ``[B, out_h, out_w, 3]``, as FFCV's RRC decoder does;
- boxes are clipped to the stored image; a sample that cannot be decoded (an empty box, a corrupt
  stream) comes out black and its row is recorded: :meth:`PlannedCropDecoder.check` raises a
  :class:`~fasttarget.errors.UserError` naming those rows (raising inside FFCV's pipeline thread
  would leave the loader waiting forever).

:func:`stored_sizes` reads every row's stored ``(height, width)`` from a beton's metadata without
decoding, for the planner; :func:`fasttarget.augment.center_crop_boxes` gives FFCV's center crop
(``CenterCropRGBImageDecoder``'s rule) as boxes, the test view's.

Importing this module imports ffcv (seconds of numba compilation): import it where the ffcv
backend is built, not at package import.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import SimpleRGBImageDecoder

from fasttarget.errors import UserError


def stored_sizes(path: str | os.PathLike, field: str = "image") -> np.ndarray:
    """Each row's stored ``(height, width)`` from a beton's metadata, without decoding any image.

    Args:
        path: the ``.beton`` file.
        field: the ``RGBImageField``'s name.

    Returns:
        int64 ``[rows, 2]``.

    Raises:
        UserError: no such file, or no ``RGBImageField`` of that name in it.
    """
    from ffcv.fields import RGBImageField
    from ffcv.reader import Reader

    if not Path(path).is_file():
        raise UserError(f"no beton at {path}: convert the dataset first (fasttarget convert ...)")
    reader = Reader(str(path))
    if not isinstance(reader.handlers.get(field), RGBImageField):
        raise UserError(f"{path} has no RGBImageField named {field!r} (fields: {', '.join(reader.field_names)})")
    meta = reader.metadata[f"f{reader.field_names.index(field)}"]
    return np.stack([meta["height"], meta["width"]], axis=1).astype(np.int64)


class PlannedCropDecoder(SimpleRGBImageDecoder):
    """FFCV decoder for ``RGBImageField`` data that cuts the boxes of a caller's table.

    A ``SimpleRGBImageDecoder`` subclass, as FFCV's own crop decoders are: FFCV recognises a
    pipeline's first operation as the field's decoder by that class.

    Args:
        boxes: C-contiguous writable int32 ``[rows_in_beton, 4]``, ``(x0, y0, w, h)`` per beton row,
            read in place while decoding (see the module's contract).
        output_size: ``(out_h, out_w)``.
        cache_dir: where the compiled kernel is cached (:func:`fasttarget.kernels.jpeg.build_library`).

    Raises:
        UserError: a table of the wrong dtype, shape or layout; an empty output size.

    Example (in a Loader):
        ``Loader(path, batch_size, order=OrderOption.RANDOM,
        pipelines={"image": [PlannedCropDecoder(boxes, (224, 224))], "label": [IntDecoder()]})``
    """

    def __init__(self, boxes: np.ndarray, output_size: tuple[int, int], cache_dir: str | os.PathLike | None = None):
        super().__init__()
        if not (isinstance(boxes, np.ndarray) and boxes.dtype == np.int32 and boxes.ndim == 2
                and boxes.shape[1] == 4 and boxes.flags.c_contiguous and boxes.flags.writeable):
            got = f"{boxes.dtype} {boxes.shape}" if isinstance(boxes, np.ndarray) else type(boxes).__name__
            raise UserError(f"PlannedCropDecoder boxes must be a C-contiguous writable int32 [rows, 4] "
                            f"numpy table (x0, y0, w, h), got {got}: allocate np.zeros((rows, 4), np.int32)")
        out_h, out_w = (int(s) for s in output_size)
        if out_h < 1 or out_w < 1:
            raise UserError(f"PlannedCropDecoder output_size must be positive, got {tuple(output_size)}")
        self.boxes = boxes
        self.output_size = (out_h, out_w)
        self.cache_dir = cache_dir
        self.statuses = np.zeros(len(boxes), np.int32)

    def declare_state_and_memory(self, previous_state):
        from ffcv.pipeline.allocation_query import AllocationQuery

        if len(self.metadata) > len(self.boxes):
            raise UserError(f"PlannedCropDecoder boxes has {len(self.boxes)} rows but the beton has "
                            f"{len(self.metadata)}: give the table one row per beton row")
        shape = (*self.output_size, 3)
        dtype = np.dtype("<u1")
        return replace(previous_state, jit_mode=True, shape=shape, dtype=dtype), AllocationQuery(shape, dtype)

    def generate_code(self) -> Callable:
        from ffcv.pipeline.compiler import Compiler
        from numba import set_parallel_chunksize

        from fasttarget.kernels.jpeg import build_library

        lib = build_library(self.cache_dir)
        crop_c, store_c = lib.ft_decode_crop, lib.ft_store_status
        out_h, out_w = self.output_size
        # Addresses, not arrays: numba would freeze a captured array as a constant, and the loader
        # refills the table between epochs. The decoder holds both arrays, so they stay alive.
        boxes_addr, status_addr = self.boxes.ctypes.data, self.statuses.ctypes.data
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()

        def decode_one(data, mode, height, width, row, dst):
            status = crop_c(data.ctypes.data, data.size, mode, height, width, boxes_addr + 16 * row,
                            dst.ctypes.data, out_h, out_w, 1)
            if status != 0:
                dst[:] = 0
            store_c(status_addr, row, status)

        decode_one_c = Compiler.compile(decode_one)

        def decode(batch_indices, destination, metadata, storage_state):
            # Images differ in size and crops in area, so the equal halves of a batch that numba's
            # static schedule hands two threads finish apart; one image at a time keeps every
            # thread busy to the batch's end (+7-11 % img/s on 224-px RRC, 2 threads, measured).
            # The setting is the calling thread's: put it back for the pipeline's other stages.
            static = set_parallel_chunksize(1)
            for i in my_range(len(batch_indices)):
                row = batch_indices[i]
                field = metadata[row]
                data = mem_read(field["data_ptr"], storage_state)
                decode_one_c(data, field["mode"], field["height"], field["width"], row, destination[i])
            set_parallel_chunksize(static)
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode

    def failed_rows(self) -> np.ndarray:
        """Beton rows whose last decode failed (their views came out black)."""
        return np.flatnonzero(self.statuses)

    def check(self) -> None:
        """Raise if any sample decoded so far failed.

        Raises:
            UserError: naming up to 5 failed rows and the reason of the first.
        """
        rows = self.failed_rows()
        if len(rows):
            from fasttarget.kernels.jpeg import STATUS

            why = STATUS.get(int(self.statuses[rows[0]]), "unknown status")
            shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
            raise UserError(f"{len(rows)} samples failed to decode (rows {shown}; first: {why}): "
                            "check their boxes, or reconvert the dataset")

"""Batched kernels used by fasttarget, installed as ``fasttarget.kernels``.

Each kernel has a plain torch reference and a test comparing the two (``tests/test_kernels.py``):

- :mod:`fasttarget.kernels.resized_crop`: one ``grid_sample`` crop-and-resize for a whole batch;
  reference ``resized_crop_reference`` (per-sample slice + ``F.interpolate``, Kornia's slice mode),
  also compared with Kornia's ``crop_by_indices``.
- :mod:`fasttarget.kernels.stdaug`: StdAug's color, grayscale, flip and crop fused into one numba
  kernel for CPU batches (needs numba, imported only on use); reference: the torch ops of
  :mod:`fasttarget.augment`, which are also the GPU path.
"""

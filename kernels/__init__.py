"""Batched kernels used by fasttarget, installed as ``fasttarget.kernels``.

Each kernel has a plain torch/numpy reference implementation next to it and a test
comparing the two.
"""

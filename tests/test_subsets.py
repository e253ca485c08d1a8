"""IPC and fraction subsets: stratified, deterministic, nested, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fasttarget.errors import UserError
from fasttarget.sources import open_source
from fasttarget.subsets import SubsetConfig, select_subset


@pytest.fixture(scope="module")
def sample_labels() -> np.ndarray:
    """The bundled CIFAR-10 sample's train labels (500 per class, in source order)."""
    from fasttarget.demo import SAMPLE_SOURCE

    return open_source("cifar10", SAMPLE_SOURCE).train.labels


def test_ipc_is_stratified_sorted_and_deterministic(sample_labels):
    rows = select_subset(sample_labels, SubsetConfig(ipc=10, seed=3))
    assert rows.dtype == np.int64 and len(rows) == 100
    assert np.all(np.diff(rows) > 0)
    assert np.bincount(sample_labels[rows]).tolist() == [10] * 10
    np.testing.assert_array_equal(rows, select_subset(sample_labels, SubsetConfig(ipc=10, seed=3)))
    assert not np.array_equal(rows, select_subset(sample_labels, SubsetConfig(ipc=10, seed=4)))


@pytest.mark.parametrize("seed", [0, 7])
def test_subsets_of_one_seed_are_nested(sample_labels, seed):
    ladder = [select_subset(sample_labels, SubsetConfig(ipc=n, seed=seed)) for n in (1, 10, 50, 200, 500)]
    for small, large in zip(ladder, ladder[1:]):
        assert np.isin(small, large).all()
    assert len(ladder[-1]) == len(sample_labels)
    fractions = [select_subset(sample_labels, SubsetConfig(fraction=f, seed=seed)) for f in (0.02, 0.1, 0.5)]
    for small, large in zip(fractions, fractions[1:]):
        assert np.isin(small, large).all()
    # Fraction 0.02 of 500 per class is IPC 10: the same rows, since both take a prefix of one order.
    np.testing.assert_array_equal(fractions[0], ladder[1])


def test_fraction_rounds_up_per_class_without_float_noise():
    labels = np.repeat(np.arange(3), [100, 10, 3])
    rows = select_subset(labels, SubsetConfig(fraction=0.07))
    assert np.bincount(labels[rows]).tolist() == [7, 1, 1]  # 0.07 * 100 is 7.000000000000001 in floats
    assert len(select_subset(labels, SubsetConfig())) == len(labels)
    assert len(select_subset(labels, SubsetConfig(fraction=1.0))) == len(labels)


def test_too_few_images_and_bad_values_are_user_errors():
    labels = np.repeat(np.arange(3), [5, 2, 5])
    with pytest.raises(UserError, match=r"class 1 has only 2 images, fewer than --ipc 3"):
        select_subset(labels, SubsetConfig(ipc=3))
    with pytest.raises(UserError, match="exclude each other"):
        SubsetConfig(ipc=1, fraction=0.5)
    with pytest.raises(UserError, match=r"--ipc must be at least 1"):
        SubsetConfig(ipc=0)
    with pytest.raises(UserError, match=r"--fraction must be in \(0, 1\]"):
        SubsetConfig(fraction=1.5)


def test_describe_names_the_subset():
    assert SubsetConfig(ipc=10, seed=2).describe() == "ipc10-seed2"
    assert SubsetConfig(fraction=0.25).describe() == "frac0.25-seed0"
    assert SubsetConfig().describe() == "full"

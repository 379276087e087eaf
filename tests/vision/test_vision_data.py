"""Digits loader, label-noise injectors and open-set splits."""

import numpy as np
import pytest

from llmkit.vision import VisionError
from llmkit.vision.data import (
    asymmetric_noise,
    initial_labelled,
    inject_noise,
    load_digits_split,
    make_multilabel,
    open_set_split,
    pair_noise,
    symmetric_noise,
)


def test_digits_split_is_stratified_and_scaled():
    split = load_digits_split(0)
    assert split.x_train.shape == (1257, 64) and split.x_test.shape == (540, 64)
    assert split.x_train.min() >= 0 and split.x_train.max() <= 1 and split.num_classes == 10
    assert np.bincount(split.y_test).min() >= 50
    with pytest.raises(VisionError, match="test_fraction"):
        load_digits_split(0, 1.5)


def test_symmetric_noise_rates():
    y = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    assert (symmetric_noise(y, 0.0, 10, rng) == y).all()
    changed = symmetric_noise(y, 0.4, 10, rng, exclude_true=True) != y
    assert changed.sum() == 400  # every corrupted label changes
    changed = symmetric_noise(y, 0.4, 10, rng) != y
    assert 300 < changed.sum() < 400  # ≈ 0.4·9/10 when the draw may hit the true class
    with pytest.raises(VisionError, match="noise rate"):
        symmetric_noise(y, 1.2, 10, rng)
    with pytest.raises(VisionError, match="labels must lie"):
        symmetric_noise(np.array([0, 10]), 0.1, 10, rng)


def test_asymmetric_and_pair_noise_follow_their_maps():
    y = np.repeat(np.arange(10), 50)
    noisy = asymmetric_noise(y, 1.0, np.random.default_rng(0))
    assert noisy[y == 2].tolist() == [7] * 50 and noisy[y == 7].tolist() == [1] * 50
    assert (noisy[y == 0] == 0).all() and (noisy[y == 5] == 6).all() and (noisy[y == 6] == 5).all()
    assert (pair_noise(y, 1.0, 10, np.random.default_rng(0)) == (y + 1) % 10).all()
    assert (inject_noise(y, "pair", 0.0, 10, np.random.default_rng(0)) == y).all()
    with pytest.raises(VisionError, match="unknown noise kind"):
        inject_noise(y, "instance", 0.2, 10, np.random.default_rng(0))


def test_open_set_split_and_initial_labels():
    view = open_set_split(np.array([4, 0, 9, 4, 2]), known_classes=[4, 2])
    assert view.known_labels.tolist() == [0, -1, -1, 0, 1] and view.is_known.tolist() == [1, 0, 0, 1, 1]
    assert view.num_known == 2
    with pytest.raises(VisionError, match="duplicates"):
        open_set_split(np.array([1]), [1, 1])
    y = np.repeat(np.arange(4), 5)
    chosen = initial_labelled(y, 2, np.random.default_rng(0), classes=[0, 3])
    assert np.bincount(y[chosen], minlength=4).tolist() == [2, 0, 0, 2]
    with pytest.raises(VisionError, match="fewer than"):
        initial_labelled(y, 6, np.random.default_rng(0))


def test_multilabel_data_shape():
    x, y = make_multilabel(200, 16, 5, seed=0)
    assert x.shape == (200, 16) and y.shape == (200, 5) and set(np.unique(y)) <= {0.0, 1.0}


def test_tensors_from_any_torch_dataset():
    import torch
    from torch.utils.data import TensorDataset

    from llmkit.vision.data import tensors_from_dataset

    x, y = tensors_from_dataset(
        TensorDataset(torch.ones(5, 1, 8, 8, dtype=torch.float64), torch.arange(5)), batch_size=2
    )
    assert x.shape == (5, 1, 8, 8) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(VisionError, match="empty"):
        tensors_from_dataset(TensorDataset(torch.zeros(0, 2), torch.zeros(0)))
    with pytest.raises(VisionError, match="pairs"):
        tensors_from_dataset(TensorDataset(torch.zeros(2, 2)))

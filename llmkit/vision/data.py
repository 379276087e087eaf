"""Small real data for the CPU checks: scikit-learn's bundled digits, label-noise injectors, open-set splits,
and synthetic shapes for semantic segmentation (`make_shapes`).

Everything here is numpy in, numpy out (plus `as_tensors` for torch), seeded by an explicit
`numpy.random.Generator`, so an experiment is reproducible from its seed alone. The loops accept
any torch Dataset or tensors: users can bring CIFAR or their own data instead of digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmkit.vision import VisionError

#: Label flips for asymmetric noise on digits: visually similar pairs, in the style of the MNIST
#: flips used in the noisy-label literature (2→7, 3→8, 5↔6, 7→1). Unlisted classes never flip.
DIGITS_ASYMMETRIC_FLIPS: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


@dataclass(frozen=True)
class Split:
    """A train/test split of features and integer labels (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        """Number of classes seen in train or test labels (labels are 0..K-1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits_split(seed: int = 0, test_fraction: float = 0.3) -> Split:
    """Load scikit-learn's bundled 8×8 digits (1,797 images, 10 classes; no download), stratified split.

    Pixels are scaled to [0, 1] (the raw range is 0..16) and returned as float32 vectors of 64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise VisionError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Split(x_tr, y_tr, x_te, y_te)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise VisionError(f"noise rate must be in [0, 1], got {rate}")


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise VisionError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise VisionError(f"labels must lie in [0, {num_classes - 1}], got range [{labels.min()}, {labels.max()}]")
    return labels


def symmetric_noise(
    labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, *, exclude_true: bool = False
) -> np.ndarray:
    """Replace a `rate` fraction of labels by a uniformly drawn class.

    With `exclude_true=False` (the DivideMix/DPC convention) the drawn class may equal the true one,
    so the realised flip rate is rate·(K−1)/K; with `exclude_true=True` every corrupted label changes.
    """
    labels = _check_labels(labels, num_classes)
    _check_rate(rate)
    noisy = labels.copy()
    corrupt = rng.permutation(labels.size)[: int(round(rate * labels.size))]
    if exclude_true:
        # Draw from the K-1 other classes: offset 1..K-1 added modulo K never lands on the true class.
        noisy[corrupt] = (labels[corrupt] + rng.integers(1, num_classes, corrupt.size)) % num_classes
    else:
        noisy[corrupt] = rng.integers(0, num_classes, corrupt.size)
    return noisy


def asymmetric_noise(
    labels: np.ndarray, rate: float, rng: np.random.Generator, flips: dict[int, int] | None = None
) -> np.ndarray:
    """Flip each label of a class listed in `flips` to its partner class with probability `rate`.

    Default flips are `DIGITS_ASYMMETRIC_FLIPS`; classes not listed keep their label.
    """
    labels = np.asarray(labels)
    _check_rate(rate)
    flips = DIGITS_ASYMMETRIC_FLIPS if flips is None else flips
    noisy = labels.copy()
    flip_now = rng.random(labels.size) < rate
    for source, target in flips.items():
        noisy[(labels == source) & flip_now] = target
    return noisy


def pair_noise(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Pair-flip noise: each label k becomes (k+1) mod K with probability `rate` (Han et al.'s "pairflip")."""
    labels = _check_labels(labels, num_classes)
    _check_rate(rate)
    noisy = labels.copy()
    flip_now = rng.random(labels.size) < rate
    noisy[flip_now] = (labels[flip_now] + 1) % num_classes
    return noisy


NOISE_KINDS = ("symmetric", "asymmetric", "pair")


def inject_noise(labels: np.ndarray, kind: str, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Dispatch to one of the noise injectors by name: 'symmetric', 'asymmetric' or 'pair'."""
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes, rng)
    if kind == "asymmetric":
        return asymmetric_noise(labels, rate, rng)
    if kind == "pair":
        return pair_noise(labels, rate, num_classes, rng)
    raise VisionError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")


@dataclass(frozen=True)
class OpenSetSplit:
    """Known/unknown view of a label vector for open-set active learning.

    `known_labels[i]` is the remapped class 0..C-1 of example i if its class is known, else -1.
    """

    known_classes: tuple[int, ...]
    is_known: np.ndarray
    known_labels: np.ndarray

    @property
    def num_known(self) -> int:
        """C, the number of known classes."""
        return len(self.known_classes)


def open_set_split(labels: np.ndarray, known_classes) -> OpenSetSplit:
    """Mark which examples belong to `known_classes` and remap those classes to 0..C-1 (order kept)."""
    labels = np.asarray(labels)
    known_classes = tuple(int(c) for c in known_classes)
    if not known_classes:
        raise VisionError("open_set_split needs at least one known class")
    if len(set(known_classes)) != len(known_classes):
        raise VisionError(f"known_classes has duplicates: {known_classes}")
    remap = {c: i for i, c in enumerate(known_classes)}
    known_labels = np.array([remap.get(int(y), -1) for y in labels], dtype=np.int64)
    return OpenSetSplit(known_classes, known_labels >= 0, known_labels)


def initial_labelled(labels: np.ndarray, per_class: int, rng: np.random.Generator, classes=None) -> np.ndarray:
    """Draw `per_class` example indices from each class in `classes` (default: all), sorted.

    Used to seed an AL run with a few labelled known-class examples.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels) if classes is None else classes
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise VisionError(f"class {c} has {members.size} examples, fewer than per_class={per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def make_multilabel(n_samples: int = 3000, n_features: int = 64, n_labels: int = 15, seed: int = 0):
    """Synthetic multi-label data (scikit-learn's `make_multilabel_classification`), features standardised.

    Returns (x float32 [n, d], y float32 {0,1} [n, K]); for the multi-label losses (L2D, CAP).
    """
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(
        n_samples=n_samples, n_features=n_features, n_classes=n_labels, n_labels=3, random_state=seed
    )
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x.astype(np.float32), y.astype(np.float32)


#: Classes of `make_shapes`; 0 is the background.
SHAPE_CLASSES: tuple[str, ...] = ("background", "square", "disc", "triangle")


def shape_mask(kind: str, size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean [size, size] mask of one shape: an axis-aligned square of half-side `radius`, a disc of
    `radius`, or an upward triangle (apex `radius` above the centre, base `radius` below, base width 2·radius)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = rows - centre[0], cols - centre[1]
    if kind == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if kind == "disc":
        return dy**2 + dx**2 <= radius**2
    if kind == "triangle":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise VisionError(f"unknown shape {kind!r}; choose one of {', '.join(SHAPE_CLASSES[1:])}")


def outline(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels of a [H, W] label map with a 4-neighbour of another label (image edges do not count)."""
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="edge")
    differs = np.zeros(labels.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        differs |= shifted != labels
    return differs & (labels != 0)


def make_shapes(
    n: int,
    rng: np.random.Generator,
    *,
    size: int = 32,
    max_shapes: int = 3,
    radius: tuple[float, float] = (4.0, 9.0),
    noise: float = 0.35,
    ignore_index: int | None = 255,
):
    """Synthetic semantic segmentation: squares, discs and triangles (classes 1-3) on a noisy background (0).

    Each image holds 1..`max_shapes` shapes (uniform kind, centre and radius; later shapes are drawn over earlier
    ones); every shape gets an intensity drawn from U(0.5, 1) and the whole image N(0, noise²) pixel noise, so the
    class of a pixel follows from the shape around it, not from its brightness. With `ignore_index` set, each
    shape's outline (`outline`) is labelled ignore_index, as Pascal VOC marks object boundaries void.
    Returns (x float32 [n, 1, size, size], y int64 [n, size, size]).
    """
    if n < 1 or size < 8 or max_shapes < 1 or not 0 < radius[0] <= radius[1]:
        raise VisionError(
            f"make_shapes needs n ≥ 1, size ≥ 8, max_shapes ≥ 1 and 0 < radius[0] ≤ radius[1]; got "
            f"n={n}, size={size}, max_shapes={max_shapes}, radius={radius}"
        )
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    y = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, max_shapes + 1)):
            cls = int(rng.integers(1, len(SHAPE_CLASSES)))
            mask = shape_mask(SHAPE_CLASSES[cls], size, tuple(rng.uniform(2, size - 2, 2)), rng.uniform(*radius))
            x[i, 0][mask] = rng.uniform(0.5, 1.0)
            y[i][mask] = cls
        if ignore_index is not None:
            y[i][outline(y[i])] = ignore_index
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    return x, y


def as_tensors(*arrays):
    """Convert numpy arrays to torch tensors (float arrays → float32, integer arrays → int64)."""
    import torch

    out = []
    for a in arrays:
        a = np.asarray(a)
        out.append(torch.as_tensor(a, dtype=torch.float32 if np.issubdtype(a.dtype, np.floating) else torch.int64))
    return out[0] if len(out) == 1 else tuple(out)


def tensors_from_dataset(dataset, batch_size: int = 512):
    """Stack any map-style torch Dataset yielding (input, label) pairs into (x float32 [N, ...], y int64 [N]).

    The loops work on tensors held in memory (the CPU checks are small); this is how a user brings
    CIFAR or their own data: `x, y = tensors_from_dataset(my_dataset)`.
    """
    import torch
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        raise VisionError("the dataset is empty")
    xs, ys = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise VisionError("the dataset must yield (input, label) pairs")
        xs.append(torch.as_tensor(batch[0]).float())
        ys.append(torch.as_tensor(batch[1]).long())
    return torch.cat(xs), torch.cat(ys)

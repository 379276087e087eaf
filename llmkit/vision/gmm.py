"""Two-component 1-D Gaussian mixtures: the "which mode is this value in" step shared by DPC, LfOSA and EAOA."""

from __future__ import annotations

import warnings

import numpy as np

from llmkit.vision import VisionError


def min_max_normalise(values: np.ndarray) -> np.ndarray:
    """Scale values to [0, 1]; a constant vector maps to zeros (nothing to separate)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    return np.zeros_like(values) if span <= 0 else (values - values.min()) / span


def two_gmm_posterior(
    values,
    component: str = "high",
    *,
    normalise: bool = True,
    seed: int = 0,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> np.ndarray:
    """Fit a 2-component 1-D GMM and return each value's posterior of the `component` ("high"/"low" mean).

    Defaults (max_iter 10, tol 1e-2, reg_covar 5e-4) are DivideMix/DPC's. With fewer than two distinct
    values the mixture is undefined and every posterior is 0.5 ("undecided").
    """
    if component not in ("high", "low"):
        raise VisionError(f"component must be 'high' or 'low', got {component!r}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise VisionError("two_gmm_posterior got non-finite values")
    if np.unique(values).size < 2:
        return np.full(values.shape, 0.5)
    from sklearn.mixture import GaussianMixture

    data = min_max_normalise(values) if normalise else values
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    with warnings.catch_warnings():  # 10 EM steps rarely "converge" by sklearn's test; that is the recipe
        warnings.simplefilter("ignore")
        gmm.fit(data[:, None])
    pick = int(np.argmax(gmm.means_[:, 0]) if component == "high" else np.argmin(gmm.means_[:, 0]))
    return gmm.predict_proba(data[:, None])[:, pick]

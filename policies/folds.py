"""Out-of-fold predictions (cross-fitting): each row predicted by a model fitted without its fold,
so calibration, stacking and a cascade's threshold are chosen on predictions for prompts the
predicting model never saw."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) per row, seeded, whole groups at a time (`groups`: a group id per row,
    0..n-1): rows of one group, e.g. one prompt text, are never split across folds."""
    n = int(groups.max()) + 1 if len(groups) else 0
    fold_of_group = np.empty(n, dtype=int)
    fold_of_group[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return fold_of_group[groups]


def out_of_fold(
    fold: np.ndarray, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], out: np.ndarray
) -> np.ndarray:
    """Fill `out`'s rows fold by fold with `fit_predict(train, test)` (boolean row masks): a
    model fitted on the `train` rows predicting the `test` rows. Returns `out`."""
    for f in np.unique(fold):
        test = fold == f
        out[test] = fit_predict(~test, test)
    return out

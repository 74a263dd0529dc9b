"""Out-of-fold predictions (cross-fitting): each row predicted by a model fitted without its fold,
so calibration, stacking and a cascade's threshold are chosen on predictions for prompts the
predicting model never saw."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def out_of_fold(
    fold: np.ndarray, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], out: np.ndarray
) -> np.ndarray:
    """Fill `out`'s rows fold by fold with `fit_predict(train, test)` (boolean row masks): a
    model fitted on the `train` rows predicting the `test` rows. Returns `out`."""
    for f in np.unique(fold):
        test = fold == f
        out[test] = fit_predict(~test, test)
    return out

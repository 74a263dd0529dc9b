"""A small multi-output MLP: prompt embedding -> P(each model answers well), trained jointly on
all models with a masked soft-label cross-entropy (missing cells do not count)."""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, sigmoid


class MLPPolicy(LearnedPolicy):
    name = "mlp"

    def __init__(
        self,
        hidden: int = 128,
        dropout: float = 0.2,
        weight_decay: float = 1e-3,
        lr: float = 1e-3,
        epochs: int = 200,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    def _fit_scores(self, X, Y, M):
        import torch

        from policies.torch_fit import fit_module, masked_bce, tensors

        Xt, Yt, Mt = tensors(X, Y, M)
        torch.manual_seed(self.seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], self.hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, Y.shape[1]),
        )
        fit_module(
            net,
            lambda mod, i: masked_bce(mod(Xt[i]), Yt[i], Mt[i]),
            len(X),
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
        )
        self.w1_ = net[0].weight.detach().numpy().T.copy()
        self.b1_ = net[0].bias.detach().numpy().copy()
        self.w2_ = net[3].weight.detach().numpy().T.copy()
        self.b2_ = net[3].bias.detach().numpy().copy()

    def _scores(self, X):
        h = np.maximum(np.asarray(X, dtype=np.float32) @ self.w1_ + self.b1_, 0.0)
        return sigmoid(h @ self.w2_ + self.b2_)

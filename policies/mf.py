"""Matrix factorisation (RouteLLM-style): a learned embedding per model and a projection of the
prompt embedding into the same space; P(model j answers prompt x well) =
sigmoid(w . (v_j * P x) + b_j). Models share the projection, so a model with little data borrows
strength from the others."""

from __future__ import annotations

import numpy as np

from policies.learned import LearnedPolicy, sigmoid


class MFPolicy(LearnedPolicy):
    name = "mf"

    def __init__(
        self,
        dim: int = 64,
        weight_decay: float = 1e-4,
        lr: float = 3e-3,
        epochs: int = 200,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.dim = dim
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    def _fit_scores(self, X, Y, M):
        import torch

        from policies.torch_fit import fit_module, masked_bce, start_at_base_rates, tensors

        Xt, Yt, Mt = tensors(X, Y, M)
        torch.manual_seed(self.seed)
        m = Y.shape[1]

        class MF(torch.nn.Module):
            def __init__(self, d_in, dim):
                super().__init__()
                self.proj = torch.nn.Linear(d_in, dim, bias=False)
                self.models = torch.nn.Parameter(torch.randn(m, dim) / dim**0.5)
                self.w = torch.nn.Parameter(torch.ones(dim))
                self.bias = torch.nn.Parameter(torch.zeros(m))

            def forward(self, x):
                z = self.proj(x)  # (n, dim)
                return (z[:, None, :] * self.models[None] * self.w).sum(-1) + self.bias

        net = MF(X.shape[1], self.dim)
        start_at_base_rates(net.bias, Yt, Mt)
        fit_module(
            net,
            lambda mod, i: masked_bce(mod(Xt[i]), Yt[i], Mt[i]),
            len(X),
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
        )
        self.proj_ = net.proj.weight.detach().numpy().T.copy()  # (d_in, dim)
        self.model_emb_ = (net.models * net.w).detach().numpy().copy()  # (m, dim)
        self.bias_ = net.bias.detach().numpy().copy()

    def _scores(self, X):
        z = np.asarray(X, dtype=np.float32) @ self.proj_
        return sigmoid(z @ self.model_emb_.T + self.bias_)

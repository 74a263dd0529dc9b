"""Training loop shared by the neural policies (MLP, matrix factorisation, Bradley-Terry).

Torch is used to *fit* only; the fitted weights are copied out as numpy arrays and prediction
is numpy, so serving a policy never builds a torch graph."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def fit_module(
    module,
    loss_fn: Callable,
    n: int,
    *,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    val_frac: float = 0.1,
    patience: int = 15,
    seed: int = 0,
):
    """Minimise `loss_fn(module, idx)` (mean loss of rows `idx`) with Adam; early-stop on a
    held-out `val_frac` of the rows and restore the best weights. Returns the module."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(val_frac * n)) if n >= 20 else 0
    # small data: smaller batches, so an epoch is still several steps
    batch_size = int(min(batch_size, max(16, (n - n_val) // 8)))
    val, train = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad = float("inf"), None, 0
    for _ in range(epochs):
        module.train()
        for s in range(0, len(train), batch_size):
            idx = torch.as_tensor(train[rng.permutation(len(train))][s : s + batch_size])
            opt.zero_grad()
            loss = loss_fn(module, idx)
            loss.backward()
            opt.step()
        if not n_val:
            continue
        module.eval()
        with torch.no_grad():
            v = float(loss_fn(module, torch.as_tensor(val)))
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return module


def start_at_base_rates(bias, Y, M) -> None:
    """Set each model's `bias` (a parameter of m logits) to the logit of its observed rate of good
    answers, so a fit starts from the base rates rather than from 0.5."""
    import torch

    with torch.no_grad():
        p = (Y * M).sum(0) / M.sum(0).clamp(min=1)
        bias.copy_(torch.logit(p.clamp(1e-3, 1 - 1e-3)))


def masked_bce(logits, Y, M):
    """Soft-label binary cross-entropy over observed cells only."""
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, reduction="none")
    return (loss * M).sum() / M.sum().clamp(min=1.0)


def tensors(X: np.ndarray, Y: np.ndarray, M: np.ndarray):
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return (
        torch.as_tensor(np.asarray(X, dtype=np.float32)),
        torch.as_tensor(np.where(M, Y, 0.0).astype(np.float32)),
        torch.as_tensor(M.astype(np.float32)),
    )

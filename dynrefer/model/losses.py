"""Losses of DynRefer's heads."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AsymmetricLoss", "pairwise_sigmoid_loss"]


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label tagging (Ridnik et al. 2021), summed over labels and samples.

    p = sigmoid(x); negatives use p_m = max(p − clip, 0) (i.e. 1 − p shifted by ``clip``, capped at 1);
    L = −Σ [ y·(1−p)^γ+·log p + (1−y)·p_m^γ−·log(1−p_m) ]. The focusing weights carry no gradient.
    """

    def __init__(self, gamma_neg: float = 7.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        q = 1 - p
        if self.clip and self.clip > 0:
            q = (q + self.clip).clamp(max=1)
        loss = targets * torch.log(p.clamp(min=self.eps)) + (1 - targets) * torch.log(q.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                pt = p * targets + q * (1 - targets)
                gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
                w = torch.pow(1 - pt, gamma)
            loss = loss * w
        return -loss.sum()


def pairwise_sigmoid_loss(logits: Tensor, positive_offset: int = 0) -> Tensor:
    """SigLIP-style loss on [B, B_all] logits whose positives sit at (i, positive_offset + i).

    L = −Σ log σ(z_ij · logit_ij) / B with z = +1 on the positives and −1 elsewhere.
    """
    B, N = logits.shape
    labels = -torch.ones_like(logits)
    idx = torch.arange(B, device=logits.device)
    labels[idx, positive_offset + idx] = 1
    return -F.logsigmoid(labels * logits).sum() / B

"""The Inception loss: label-smoothed cross-entropy on the main logits plus weighted auxiliary heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Mean over the batch of ``−Σ_k q'(k) log p(k)`` with ``q' = (1 − ε)·δ_{k,y} + ε/K`` (Rethinking §7, u = 1/K).
    ``logits`` (B, K) in any float dtype (computed in float32), ``target`` (B,) class indices."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(1, target.view(-1, 1)).squeeze(1)
    if smoothing == 0:
        return nll.mean()
    return ((1.0 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


def split_outputs(outputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(main logits, [aux logits, ...])`` from a model output: a tensor, or a torchvision-style named tuple
    (``InceptionOutputs(logits, aux_logits)``, ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    main, *aux = outputs
    return main, [a for a in aux if a is not None]


def inception_loss(
    outputs, target: torch.Tensor, smoothing: float = 0.1, aux_weight: float = 0.4
) -> torch.Tensor:
    """``L(main) + aux_weight · Σ L(aux_i)`` with ``L`` = :func:`smoothed_cross_entropy` (TF-slim smooths the
    auxiliary targets too). The papers: ``aux_weight`` 0.3 per head for GoogLeNet, 0.4 for Inception-v3."""
    main, aux = split_outputs(outputs)
    loss = smoothed_cross_entropy(main, target, smoothing)
    for a in aux:
        loss = loss + aux_weight * smoothed_cross_entropy(a, target, smoothing)
    return loss

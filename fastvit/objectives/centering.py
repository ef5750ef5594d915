"""Teacher centering: softmax centering with an EMA center (Sinkhorn-Knopp: fastvit.ops.sinkhorn)."""

import torch
import torch.nn as nn

from fastvit.ops.sinkhorn import all_reduce_

__all__ = ["softmax_center", "Centering"]


def softmax_center(teacher_logits, center, temp):
    """softmax((t - c) / temp) over the last dim, in fp32; t [..., K], c broadcastable to it (e.g. [K])."""
    if not temp > 0:
        raise ValueError(f"softmax_center needs a positive temperature, got {temp}")
    return torch.softmax((teacher_logits.detach().float() - center.float()) / temp, dim=-1)


class Centering(nn.Module):
    """EMA center c [K] of the mean teacher logits over the global batch: c <- m * c + (1 - m) * mean.

    The row sums and row counts are all-reduced over `group` when torch.distributed is initialised, so
    every rank holds the same center (that of the concatenated global batch). A step with no rows anywhere
    (e.g. no masked patches) leaves the center unchanged.
    """

    def __init__(self, dim, momentum=0.9):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"Centering momentum must lie in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(dim))

    @torch.no_grad()
    def update(self, teacher_logits, group=None):
        """teacher_logits [..., K]: any rows of this rank."""
        t = teacher_logits.detach().float().reshape(-1, self.center.shape[0])
        self._apply_sums(t.sum(0), t.shape[0], group)

    @torch.no_grad()
    def update_factored(self, features, prototypes, group=None):
        """Same update for logits = features [..., D] @ prototypes [K, D]^T, without building the logits."""
        x = features.detach().float().reshape(-1, features.shape[-1])
        self._apply_sums(x.sum(0) @ prototypes.detach().float().t(), x.shape[0], group)

    def _apply_sums(self, row_sum_K, n_rows, group):
        if row_sum_K.shape != self.center.shape:
            raise ValueError(f"Centering holds {self.center.shape[0]} entries, got logits with {row_sum_K.shape[0]}")
        packed = torch.cat([row_sum_K, row_sum_K.new_full((1,), float(n_rows))])
        packed = all_reduce_(packed, "sum", group)
        count = packed[-1]
        # on the device, without reading the count: c <- m * c + (1 - m) * mean when there are rows
        updated = (self.center * self.momentum).add_(packed[:-1] / count, alpha=1.0 - self.momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))

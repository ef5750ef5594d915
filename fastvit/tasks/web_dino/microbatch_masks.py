"""The iBOT masked patches of a batch split by pipeline microbatch, without a host sync.

The loader gives the M masked patches of a batch as flat indices into its crop-major masks (n_g*B, N), with their
weights, and the masked count of each crop on the host (mask_counts). A microbatch k holds images [k*b, (k+1)*b);
its masked patches, in its own crop-major order (masks_k[masks_k]), are for each crop c the contiguous run of
the batch's patches of crop c and images [k*b, (k+1)*b). From the host counts, each run's start in the batch's
order and in the microbatch's are known, so every patch's place is an index computation on the device (static
shapes, no nonzero, no sort):

    plan = split_masks(counts, mask_indices, mask_weights, B=B, n_global=2, n_micro=4, n_patches=N)
    plan.indices_KM[k, :plan.counts[k]]    # flat indices into microbatch k's crop-major masks (n_g*b, N)
    plan.weights_KM[k, :plan.counts[k]]    # their iBOT weights
    plan.starts[k]                         # rows of the microbatches before k (host int)
    plan.unpad(rows)                       # (n_micro*W, D) rows computed on every padded index -> the M real ones
"""

from dataclasses import dataclass

import numpy as np
import torch

from fastvit.host_copy import to_device_async


@dataclass(frozen=True)
class MicrobatchMasks:
    counts: tuple  # masked patches per microbatch (host ints)
    indices_KM: torch.Tensor  # (n_micro, max count) int64 on the device, padded with 0
    weights_KM: torch.Tensor  # (n_micro, max count) float32 on the device, padded with 0

    @property
    def starts(self):
        """Rows of the microbatches before each one (host ints): the teacher's iBOT rows are microbatch-major."""
        return tuple(int(s) for s in np.cumsum((0,) + self.counts[:-1]))

    def unpad(self, x_KWD):
        """The real rows of per-microbatch outputs padded to W rows each, x (n_micro*W, D) -> (M, D)."""
        W = self.indices_KM.shape[1]
        return torch.cat([x_KWD[k * W : k * W + m] for k, m in enumerate(self.counts)])


def split_masks(mask_counts, mask_indices, mask_weights, *, B, n_global, n_micro, n_patches):
    """MicrobatchMasks of a batch of B images: mask_counts (n_g*B,) int64 on the host, mask_indices and
    mask_weights (M,) on the device (see the module docstring)."""
    b, N = B // n_micro, n_patches
    assert b * n_micro == B, (B, n_micro)
    cnt_CK = mask_counts.numpy().reshape(n_global, n_micro, b).sum(-1)  # masked patches of crop c in microbatch k
    counts = tuple(int(m) for m in cnt_CK.sum(0))
    width = max(counts)
    run_start = (np.cumsum(cnt_CK.reshape(-1)) - cnt_CK.reshape(-1)).reshape(n_global, n_micro)  # in the batch
    local_start = np.cumsum(cnt_CK, 0) - cnt_CK  # in its microbatch
    shift_CK = np.arange(n_micro)[None] * width + local_start - run_start
    device = mask_indices.device
    shift = to_device_async(shift_CK.reshape(-1), torch.int64, device)
    rows, col = mask_indices // N, mask_indices % N
    c, i = rows // B, rows % B
    k = i // b
    local = (c * b + i - k * b) * N + col  # flat index into microbatch k's (n_g*b, N) masks
    dest = torch.arange(mask_indices.shape[0], device=device) + shift[c * n_micro + k]
    indices = torch.zeros(n_micro * width, dtype=torch.int64, device=device).scatter_(0, dest, local)
    weights = torch.zeros(n_micro * width, dtype=mask_weights.dtype, device=device).scatter_(0, dest, mask_weights)
    return MicrobatchMasks(counts, indices.view(n_micro, width), weights.view(n_micro, width))

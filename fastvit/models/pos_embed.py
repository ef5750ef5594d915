"""Bicubic resampling of a learned position-embedding grid to another patch grid, differentiably.

Bicubic interpolation is linear and separable: out[i, j] = sum_ab Ah[i, a] Aw[j, b] P[a, b]. The
matrices Ah (h_out, h_in) and Aw (w_out, w_in) depend only on the grid sizes, so they are cached; the
parameter P goes through two small matmuls on every call, which keeps autograd to P intact (caching
the interpolated embedding itself would go stale after every optimizer step and cut the graph).

The matrices are obtained by resampling an identity with torch's own bicubic kernel, so the result
equals F.interpolate(P, mode="bicubic", align_corners=False) with the same size / scale arguments:
offset > 0 reproduces DINOv2 / Web-SSL (scale_factor = (out + offset) / in), offset 0 the Hugging
Face Dinov2 behaviour (size = out).
"""

import torch
import torch.nn.functional as F


def bicubic_matrix(n_in, n_out, offset, device=None):
    """(n_out, n_in) float32 matrix A with A @ v = 1-D bicubic resampling of v (align_corners=False)."""
    eye = torch.eye(n_in, dtype=torch.float64, device=device).view(1, n_in, n_in, 1)  # channels = basis vectors
    if offset > 0:
        out = F.interpolate(eye, scale_factor=((n_out + offset) / n_in, 1.0), mode="bicubic", align_corners=False)
    else:
        out = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)
    assert out.shape[2] == n_out, (out.shape, n_in, n_out, offset)
    return out[0, :, :, 0].t().float().contiguous()  # (n_out, n_in)


class PosEmbedResampler:
    """Callable holding the per-(grid in, grid out) matrix cache; never holds parameter-derived tensors."""

    def __init__(self, offset=0.1):
        self.offset = offset
        self._cache = {}

    def matrices(self, grid_in, grid_out, device):
        key = (grid_in, grid_out, str(device))
        if key not in self._cache:
            Ah = bicubic_matrix(grid_in[0], grid_out[0], self.offset, device)
            Aw = bicubic_matrix(grid_in[1], grid_out[1], self.offset, device)
            self._cache[key] = (Ah, Aw)
        return self._cache[key]

    def __call__(self, pos_1PD, grid_in, grid_out):
        """pos (1, Hi*Wi, D) on grid_in -> (1, Ho*Wo, D) on grid_out; identity when the grids agree."""
        if tuple(grid_in) == tuple(grid_out):
            return pos_1PD
        Ah, Aw = self.matrices(tuple(grid_in), tuple(grid_out), pos_1PD.device)
        P_abD = pos_1PD.float().view(grid_in[0], grid_in[1], -1)
        out_ijD = torch.einsum("ia,jb,abd->ijd", Ah, Aw, P_abD)
        return out_ijD.reshape(1, grid_out[0] * grid_out[1], -1).to(pos_1PD.dtype)

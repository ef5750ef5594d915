"""KoLeo regulariser (Kozachenko-Leonenko entropy estimator) on L2-normalised features."""

import torch
import torch.nn.functional as F


def koleo_loss(features, eps=1e-8):
    """-mean_i log(||x_i - x_nn(i)|| + eps) over the rows of features [N, D], x = normalize(features), fp32.

    nn(i) is the nearest other row (largest dot product, the diagonal excluded). Duplicate rows give distance 0:
    the loss stays finite (-log eps) and so does the gradient (the norm's gradient at 0 is taken as 0); the
    distance is formed from the difference, never from |a|^2 + |b|^2 - 2ab (which can go negative).
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs features [N, D] with N >= 2 rows, got {tuple(features.shape)}")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(float("-inf"))
        nearest = dots.argmax(dim=1)
    dist = torch.linalg.vector_norm(x - x[nearest], dim=-1)
    return -torch.log(dist + eps).mean()

"""DINO / iBOT projection head: MLP -> L2-normalised bottleneck -> cosine prototypes.

logits_BK = normalize(mlp(x))_BD @ (g_K1 * normalize(V)_KD)^T: a weight-normalised last layer without bias, as
DINOv2's `weight_norm(nn.Linear(D, K, bias=False))` whose weight_g is initialised to 1 and then trained (it sits in
the last-layer parameter group: frozen with it for the first steps, weight-decayed after), so the logits are not
bounded by 1. The two factors are exposed separately (`features`, `prototypes` = g * normalize(V),
`prototype_logits`) so the fused loss path never builds the [rows, K] logits; g gets its gradient through
autograd of prototypes().

Build on meta, then materialise and initialise:

    with torch.device("meta"):
        head = DINOHead(1024, out_dim=131072, bottleneck_dim=384)
    head.to_empty(device="cuda")
    head.init_weights()

DINOv2 / Web-SSL checkpoint mapping (`teacher.dino_head.*` or `teacher.ibot_head.*`):
    mlp.0.weight / mlp.0.bias      -> mlp.0.weight / mlp.0.bias   (in_dim -> hidden_dim)
    mlp.2.weight / mlp.2.bias      -> mlp.2.weight / mlp.2.bias   (hidden_dim -> hidden_dim)
    mlp.4.weight / mlp.4.bias      -> mlp.4.weight / mlp.4.bias   (hidden_dim -> bottleneck_dim)
    last_layer.weight_v [K, D]     -> last_layer.weight_v [K, D]   (direction; its norm is irrelevant)
    last_layer.weight_g [K, 1]     -> last_layer.weight_g [K, 1]   (trainable norm of each prototype)
torch.nn.utils.parametrizations.weight_norm names them parametrizations.weight.original0 (g) / original1 (v);
fastvit.interop.heads reads both spellings.
With n_layers other than 3 the MLP keeps the same pattern: Linear at even indices, GELU at odd ones.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class PrototypeLogits:
    """Logits kept in factored form: logits[..., K] = features[..., D] @ prototypes[K, D]^T.

    The features are L2-normalised along D, prototype k has norm g_k. `materialize()` builds the full logits
    (what the float64 references of the tests compute).
    """

    features: torch.Tensor  # [..., D], L2-normalised
    prototypes: torch.Tensor  # [K, D], g * normalize(V): rows of norm g

    def materialize(self):
        return self.features @ self.prototypes.t()

    @property
    def shape(self):
        return (*self.features.shape[:-1], self.prototypes.shape[0])


class PrototypeLayer(nn.Module):
    """DINOv2's weight-normalised linear layer without bias: y = x @ (g * normalize(v, dim=1))^T.

    weight_v [K, D] holds the directions, weight_g [K, 1] the norms (initialised to 1, trained), with the
    names and shapes of torch.nn.utils.weight_norm(nn.Linear(D, K, bias=False)).
    """

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))  # [K, D]
        self.weight_g = nn.Parameter(torch.empty(out_dim, 1))  # [K, 1]

    def normalized_weight(self):
        """g * v / ||v|| [K, D] (DINOv2's eps-free weight_norm; F.normalize's eps only guards v = 0)."""
        return self.weight_g * F.normalize(self.weight_v, dim=1, eps=1e-12)

    def forward(self, x_ND):
        return x_ND @ self.normalized_weight().t()


def _mlp(in_dim, hidden_dim, out_dim, n_layers):
    if n_layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(n_layers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """3-layer GELU MLP (hidden 2048) -> L2-normalised bottleneck (256 iBOT / 384 DINO) -> K prototypes."""

    def __init__(self, in_dim, out_dim=131072, hidden_dim=2048, bottleneck_dim=256, n_layers=3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"DINOHead needs n_layers >= 1, got {n_layers}")
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if v < 1:
                raise ValueError(f"DINOHead {name} must be positive, got {v}")
        if bottleneck_dim < 1:
            raise ValueError(f"DINOHead bottleneck_dim must be positive, got {bottleneck_dim}")
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, n_layers)
        self.last_layer = PrototypeLayer(bottleneck_dim, out_dim)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Truncated normal (std 0.02) MLP weights, zero biases, isotropic prototype directions, g = 1 (DINOv2)."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.last_layer.weight_v, std=1.0)
        nn.init.ones_(self.last_layer.weight_g)

    def features(self, x_ND):
        """L2-normalised bottleneck features [..., bottleneck_dim]."""
        h = self.mlp(x_ND)
        eps = 1e-6 if h.dtype == torch.float16 else 1e-12
        return F.normalize(h, dim=-1, eps=eps)

    def prototypes(self):
        """Prototype matrix g * normalize(V) [out_dim, bottleneck_dim]; differentiable in g and V."""
        return self.last_layer.normalized_weight()

    def prototype_logits(self, x_ND):
        """The logits in factored form (see PrototypeLogits); nothing of size [..., out_dim] is built."""
        return PrototypeLogits(self.features(x_ND), self.prototypes())

    def forward(self, x_ND):
        return self.last_layer(self.features(x_ND))  # [..., out_dim]

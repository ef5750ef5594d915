"""The Web-MAE objective: normalised-pixel MSE on the masked patches (fastvit.ops.mae_loss, fused)."""

from torch import nn

from fastvit.ops import mae_loss


class MAEObjective(nn.Module):
    """pred (B, N, 3*p*p) from the decoder, images (B, 3, H, W), mask (B, N) bool -> {"mae", "total"}."""

    def __init__(self, patch_size, *, norm_pix=True, eps=1e-6, backend="auto"):
        super().__init__()
        self.patch_size, self.norm_pix, self.eps, self.backend = patch_size, norm_pix, eps, backend

    def forward(self, *, pred_BNP, images_B3HW, mask_BN):
        loss = mae_loss(
            pred_BNP, images_B3HW, mask_BN, self.patch_size, norm_pix=self.norm_pix, eps=self.eps, backend=self.backend
        )
        return {"mae": loss, "total": loss}

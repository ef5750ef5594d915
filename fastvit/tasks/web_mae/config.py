"""The config section objective.web_mae."""

from dataclasses import dataclass


@dataclass(kw_only=True)
class WebMAEConfig:
    mask_ratio: float = 0.75  # the encoder sees 1 - mask_ratio of the patches
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix: bool = True  # targets normalised per patch (mean / std of its pixels)
    loss_backend: str = "auto"  # auto | triton | torch (fastvit.ops.mae_loss)

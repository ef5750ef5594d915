"""The config section objective.clip: the image tower is model.*, the text tower is below."""

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class CLIPConfig:
    loss: Literal["infonce", "siglip"] = "infonce"
    embed_dim: int = 512
    text_width: int = 512
    text_depth: int = 12
    text_heads: int = 8
    context_length: int = 77
    tokenizer: str = ""  # "": offline byte-level tokenizer; else a Hugging Face tokenizers JSON file
    init_temperature: float = 0.07  # InfoNCE: logit scale starts at 1 / T (learned, capped at 100)
    loss_backend: str = "auto"  # auto | triton | torch (fastvit.ops.clip_loss)

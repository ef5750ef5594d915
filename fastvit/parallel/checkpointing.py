"""Activation checkpointing of the ViT blocks, applied from outside with torch's composable `checkpoint`
(hooks on the module, so parameter names do not change).

Modes: "none"; "full": every block keeps only its input and recomputes its forward in the backward
(+1 forward of compute, activations ~ one (tokens, width) tensor per block); "selective": every second
block is checkpointed (+1/2 forward, about half the activation memory). The random drop-path subsets are
recomputed identically because checkpoint restores the RNG state.
"""

from torch.distributed._composable import checkpoint

MODES = ("none", "full", "selective")


def checkpoint_every(mode):
    """Checkpoint one block in this many (0: none)."""
    if mode not in MODES:
        raise ValueError(f"parallel.activation_checkpointing={mode!r}: choose one of {MODES}")
    return {"none": 0, "full": 1, "selective": 2}[mode]


def apply_activation_checkpointing(blocks, mode):
    """Checkpoints blocks[0], blocks[every], ... in place; returns how many were checkpointed."""
    every = checkpoint_every(mode)
    if not every:
        return 0
    chosen = [b for i, b in enumerate(blocks) if i % every == 0]
    for block in chosen:
        checkpoint(block)
    return len(chosen)

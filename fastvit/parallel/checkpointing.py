"""Activation checkpointing of the ViT blocks, applied from outside with torch's composable `checkpoint`
(hooks on the module, so parameter names do not change).

Modes: "none"; "full": every block keeps only its input and recomputes its forward in the backward
(+1 forward of compute, activations ~ one (tokens, width) tensor per block); "selective": every second
block is checkpointed (+1/2 forward, about half the activation memory). The random drop-path subsets are
recomputed identically because checkpoint restores the RNG state.

MODES is the one list of modes: the config's parallel.activation_checkpointing and the planner read it (so this
module imports torch only when it applies checkpointing).
"""

EVERY = {"none": 0, "selective": 2, "full": 1}  # mode -> checkpoint one block in this many (0: none)
MODES = tuple(EVERY)


def checkpoint_every(mode):
    """Checkpoint one block in this many (0: none)."""
    if mode not in EVERY:
        raise ValueError(f"parallel.activation_checkpointing={mode!r}: choose one of {MODES}")
    return EVERY[mode]


def checkpointed_blocks(n_blocks, mode):
    """Indices of the blocks `mode` checkpoints among n_blocks: 0, every, 2 every, ..."""
    every = checkpoint_every(mode)
    return list(range(0, n_blocks, every)) if every else []


def apply_activation_checkpointing(blocks, mode):
    """Checkpoints blocks[0], blocks[every], ... in place; returns how many were checkpointed."""
    from torch.distributed._composable import checkpoint

    blocks = list(blocks)
    chosen = checkpointed_blocks(len(blocks), mode)
    for i in chosen:
        checkpoint(blocks[i])
    return len(chosen)

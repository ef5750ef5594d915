"""`fastvit export RUN_DIR|CHECKPOINT DST [--to hf|native] [--which teacher|student] [--heads]`: a run's model as
one file other code loads.

--to native writes one .pth / .safetensors with Web-SSL / DINOv2 key names (what `fastvit convert`, DINOv2's
vision_transformer and model.init read); with --heads the DINO and iBOT heads are added in DINOv2's names and the
backbone moves under them: `teacher.backbone.*`, `teacher.dino_head.*`, `teacher.ibot_head.*` (`student.` with
--which student), the layout of DINOv2's training checkpoints. --to hf writes a folder that transformers'
Dinov2Model.from_pretrained reads (Dinov2WithRegistersModel when the model has register tokens). Default --to:
native when DST ends in .pth / .pt / .safetensors, else hf. Default --which: the module the objective evaluates
(the EMA teacher of Web-DINO, the student of Web-MAE and CLIP, whose image encoders are exported). Whatever
layout (tp, pp, fsdp) saved the run, only the module's tensors are read: host memory for the output only.
"""

import argparse
import sys
from pathlib import Path

from fastvit.errors import one_line
from fastvit.interop.convert import write_model
from fastvit.interop.heads import head_state_to_native
from fastvit.interop.run_checkpoint import MODULES, model_state

NATIVE_SUFFIXES = (".pth", ".pt", ".safetensors")


def export(src, dst, to=None, which=None, heads=False, layout="hub"):
    """Exports the model of run / checkpoint `src` to `dst`; returns (target kind, RunModel)."""
    to = to or ("native" if Path(dst).suffix in NATIVE_SUFFIXES else "hf")
    if heads and to == "hf":
        raise ValueError("transformers' Dinov2Model has no DINO / iBOT heads: --heads needs --to native")
    got = model_state(src, which, heads=heads)
    backbone, extra = got.backbone, {}
    if heads:
        prefix = f"{got.which}."
        backbone = {f"{prefix}backbone.{k}": v for k, v in got.backbone.items()}
        for name, state in got.heads.items():
            extra.update(head_state_to_native(state, name, prefix))
    write_model(backbone, got.vit, dst, to, layout, extra=extra)
    return to, got


def _parser():
    p = argparse.ArgumentParser(prog="fastvit export", description=__doc__.split("\n")[0])
    p.add_argument("src", help="run folder (its newest checkpoint) or a checkpoints/step_<n> folder")
    p.add_argument("dst", help="HF folder (--to hf) or native .pth / .safetensors file (--to native)")
    p.add_argument("--to", choices=("hf", "native"), default=None, help="target (default: by DST's suffix)")
    p.add_argument("--which", choices=MODULES, default=None, help="module (default: the one evaluation reads)")
    p.add_argument("--heads", action="store_true", help="add the DINO and iBOT heads (native only)")
    p.add_argument("--layout", choices=("hub", "modular"), default="hub", help="HF names to write (default hub)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        to, got = export(args.src, args.dst, args.to, args.which, args.heads, args.layout)
    except ValueError as e:
        print(f"fastvit export: error: {one_line(e)}", file=sys.stderr)
        return 2
    v = got.vit
    heads = f" + {', '.join(got.heads)}" if got.heads else ""
    print(
        f"exported {got.checkpoint} ({got.which}{heads}) -> {to}: width {v.width} depth {v.depth} heads {v.heads} "
        f"registers {v.n_registers} -> {args.dst}"
    )
    return 0

"""`fastvit convert SRC DST [--to hf|native] [--model NAME]`: checkpoint conversion on the command line.

SRC: a native Web-SSL / DINOv2 file (.pth / .pt / .safetensors; flat or chunked blocks, teacher or
student prefixes) or a Hugging Face Dinov2 folder (config.json + model.safetensors or pytorch_model.bin)
or HF state-dict file. --to hf writes a folder that Dinov2Model.from_pretrained reads; --to native
writes one file (.safetensors by suffix, else torch.save). The default target is the other layout.
With --model the checkpoint must match that size-table row (a ValueError names the first key that
does not); otherwise the architecture is inferred from the weights.
"""

import argparse
import json
import sys
from pathlib import Path

from fastvit.errors import one_line
from fastvit.interop.hf import config_from_hf, detect_layout, hf_config_dict, hf_to_native, native_to_hf
from fastvit.interop.io import load_state_file, save_state_file
from fastvit.interop.native import check_state, depth_of, infer_config, normalize_native
from fastvit.models.vit import VisionTransformer, vit_config

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _read(src):
    """(state dict, HF config dict or None) from a file or an HF folder."""
    src = Path(src)
    if not src.is_dir():
        return load_state_file(src), None
    cfg_path = src / "config.json"
    for name in _HF_WEIGHTS:
        if (src / name).is_file():
            hf_cfg = _read_hf_config(cfg_path) if cfg_path.is_file() else None
            return load_state_file(src / name), hf_cfg
    raise ValueError(f"folder {str(src)!r} holds none of {_HF_WEIGHTS}")


def _read_hf_config(path):
    try:
        hf_cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__}); fix or remove it") from None
    if not isinstance(hf_cfg, dict):
        raise ValueError(f"{path} holds a {type(hf_cfg).__name__}, not a JSON object")
    return hf_cfg


def _is_hf(state):
    try:
        detect_layout({k.removeprefix("dinov2."): v for k, v in state.items()})
    except ValueError:
        return False
    return True


def _expected_shapes(cfg):
    return {k: tuple(v.shape) for k, v in VisionTransformer(cfg, device="meta").state_dict().items()}


def _check_against_weights(cfg, native):
    """ValueError when config.json's width or depth is not what the weights hold."""
    cls = native.get("cls_token")
    width = cls.shape[-1] if cls is not None else None
    if (width, depth_of(native)) != (cfg.width, cfg.depth):
        raise ValueError(
            f"config.json says hidden_size={cfg.width}, num_hidden_layers={cfg.depth} but the weights hold "
            f"width {width}, {depth_of(native)} blocks; fix config.json"
        )


def read_model(src, model=None, heads=None, prefix=None):
    """(flat native backbone state, ViTConfig, "hf" or "native", the file's whole state dict) of a native file or
    an HF folder / file; the architecture from config.json, the size-table row `model`, or the weights."""
    state, hf_cfg = _read(src)
    kind = "hf" if _is_hf(state) else "native"
    native = hf_to_native(state) if kind == "hf" else normalize_native(state, prefix)
    if hf_cfg is not None:
        cfg = config_from_hf(hf_cfg, name=model or "custom")
        _check_against_weights(cfg, native)  # before a model of config.json's size is built
    else:
        cfg = infer_config(native, name=model, heads=heads)
    if model is not None:  # the checkpoint must fit the chosen row, at the checkpoint's resolution
        cfg = vit_config(model, img_size=cfg.img_size, interpolate_offset=cfg.interpolate_offset)
    check_state(_expected_shapes(cfg), native, what=f"model {cfg.name}")
    return native, cfg, kind, state


def write_model(native, cfg, dst, to, layout="hub", extra=None):
    """Writes a flat native backbone state as an HF folder (to="hf": config.json + model.safetensors) or one
    native file (.safetensors by suffix, else torch.save), with `extra` entries (e.g. heads) in a native file."""
    if to == "hf":
        dst = Path(dst)
        if dst.exists() and not dst.is_dir():
            raise ValueError(f"{dst} is a file; --to hf writes a folder: name a new or existing folder")
        dst.mkdir(parents=True, exist_ok=True)
        save_state_file(native_to_hf(native, layout), dst / "model.safetensors")
        (dst / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
    else:
        save_state_file({**native, **(extra or {})}, dst)


def convert(src, dst, to=None, model=None, heads=None, prefix=None, layout="hub"):
    """Converts SRC to DST; returns (source kind, target kind, ViTConfig)."""
    native, cfg, kind, _ = read_model(src, model, heads, prefix)
    to = to or ("native" if kind == "hf" else "hf")
    write_model(native, cfg, dst, to, layout)
    return kind, to, cfg


def _parser():
    p = argparse.ArgumentParser(prog="fastvit convert", description=__doc__.split("\n")[0])
    p.add_argument("src", help="native checkpoint file, HF Dinov2 folder or HF state-dict file")
    p.add_argument("dst", help="HF folder (--to hf) or native file (--to native)")
    p.add_argument("--to", choices=("hf", "native"), default=None, help="target layout (default: the other one)")
    p.add_argument("--model", default=None, help="size-table name (vit_s ... vit_7b) the checkpoint must match")
    p.add_argument("--heads", type=int, default=None, help="attention heads, for widths not in the size table")
    p.add_argument("--prefix", default=None, help="key prefix of the backbone (default: detected)")
    p.add_argument("--layout", choices=("hub", "modular"), default="hub", help="HF names to write (default hub)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        kind, to, cfg = convert(args.src, args.dst, args.to, args.model, args.heads, args.prefix, args.layout)
    except ValueError as e:
        print(f"fastvit convert: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"converted {kind} -> {to}: {cfg.name} width {cfg.width} depth {cfg.depth} heads {cfg.heads} -> {args.dst}")
    return 0

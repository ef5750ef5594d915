"""fastvit.interop: Web-SSL / DINOv2 native and Hugging Face Dinov2Model checkpoint conversion."""

from fastvit.interop.heads import head_state_from_native, head_state_to_native, load_head
from fastvit.interop.hf import config_from_hf, detect_layout, hf_config_dict, hf_to_native, native_to_hf
from fastvit.interop.io import load_state_file, save_state_file
from fastvit.interop.native import check_state, infer_config, load_native, normalize_native

__all__ = [
    "check_state",
    "config_from_hf",
    "detect_layout",
    "head_state_from_native",
    "head_state_to_native",
    "hf_config_dict",
    "hf_to_native",
    "infer_config",
    "load_head",
    "load_native",
    "load_state_file",
    "native_to_hf",
    "normalize_native",
    "save_state_file",
]

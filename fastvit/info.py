"""`fastvit info`: versions, devices, how the C++/CUDA modules were built, and each op's backends."""

import importlib.metadata
import json
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet numbers of one GPU model (None: not known here; the planner offers only GPUs with all of them)."""

    tflops: float  # dense bf16 peak TFLOP/s, without sparsity (the MFU denominator, the planner's compute)
    hbm: float | None = None  # GB of HBM
    nvlink: float | None = None  # NVLink GB/s per GPU per direction
    net: float | None = None  # inter-node GB/s per GPU (one 400 Gb/s NIC per GPU on H100 / H200 nodes)
    per_node: int = 8  # GPUs per node

    @property
    def plannable(self):
        return None not in (self.hbm, self.nvlink, self.net)


# The one GPU table: MFU in the training metrics and `fastvit plan` read it. Keys are matched (longest first) as
# lower-case substrings of torch.cuda.get_device_name, e.g. "NVIDIA H200" -> "h200".
GPUS = {
    "h200": GPUSpec(989.0, hbm=141.0, nvlink=450.0, net=50.0),
    "h100": GPUSpec(989.0, hbm=80.0, nvlink=450.0, net=50.0),
    "a100": GPUSpec(312.0, hbm=80.0, nvlink=300.0, net=25.0),
    "h800": GPUSpec(989.0),
    "gh200": GPUSpec(989.0),
    "b200": GPUSpec(2250.0),
    "a800": GPUSpec(312.0),
    "l40s": GPUSpec(362.0),
    "a10g": GPUSpec(70.0),
    "rtx 4090": GPUSpec(165.0),
    "rtx 3090": GPUSpec(71.0),
    "v100": GPUSpec(125.0),
}


def gpu_spec(device_name):
    """(table key, GPUSpec) of a device name such as "NVIDIA H100 80GB HBM3", or (None, None) when unknown."""
    name = device_name.lower()
    for key in sorted(GPUS, key=len, reverse=True):
        if key in name:
            return key, GPUS[key]
    return None, None


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _build():
    from fastvit import _ext

    out = {}
    try:
        out["cpp"] = _ext.cpp().build_info()
    except ImportError as e:
        out["cpp"] = f"unavailable: {e}"
    cuda = _ext.cuda_module()
    out["cuda"] = cuda.build_info() if cuda is not None else "not built (no CUDA toolkit at install time)"
    return out


def _devices():
    devices = [{"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "type": "cuda",
                    "index": i,
                    "name": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "peak_bf16_tflops": getattr(gpu_spec(p.name)[1], "tflops", None),
                }
            )
    return devices


def collect():
    """Everything `fastvit info` reports, as a dict."""
    from fastvit import ops

    versions = {"python": platform.python_version(), "fastvit": _version("fastvit"), "torch": torch.__version__}
    for name, dist in [
        ("triton", "triton"),
        ("numpy", "numpy"),
        ("dali", "nvidia-dali-cuda130"),
        ("flash_attn", "flash-attn"),
        ("transformers", "transformers"),
    ]:
        versions[name] = _version(dist)
    return {"versions": versions, "devices": _devices(), "build": _build(), "backends": ops.available_backends()}


def main(argv):
    info = collect()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    print("versions:")
    for k, v in info["versions"].items():
        print(f"  {k:13s} {v if v else 'not installed'}")
    print("devices:")
    for d in info["devices"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in d.items()))
    print("build:")
    for mod, b in info["build"].items():
        text = ", ".join(f"{k}={v}" for k, v in b.items()) if isinstance(b, dict) else b
        print(f"  _C{'' if mod == 'cpp' else '_cuda'}: {text}")
    print("backends usable here (first = what 'auto' picks on this machine's default device):")
    for op, names in info["backends"].items():
        print(f"  {op:22s} {', '.join(names)}")
    return 0

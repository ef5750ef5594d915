"""`fastvit info`: versions, devices, how the C++/CUDA modules were built, and each op's backends."""

import importlib.metadata
import json
import platform

import torch


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

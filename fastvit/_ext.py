"""Loading the compiled modules: fastvit._C (C++/OpenMP), fastvit._C_cuda (CUDA) and fastvit._C_emulated (the
CUDA kernels on a host emulation of the CUDA runtime, for the tests).

Nothing is imported at `import fastvit`; callers ask for a module when they need it and get
a clear error when it is missing.
"""

import functools
import importlib


@functools.cache
def cpp():
    """fastvit._C, or an ImportError that says how to build it."""
    try:
        return importlib.import_module("fastvit._C")
    except ImportError as e:
        raise ImportError(
            f"fastvit._C (the C++ kernels) is not built or not loadable ({e}). "
            "Install fastvit from its source folder with `pip install -e .` so CMake compiles it."
        ) from e


@functools.cache
def emulated():
    """fastvit._C_emulated (csrc/emulation: the CUDA kernels as host C++), or an ImportError that says how to build
    it."""
    try:
        return importlib.import_module("fastvit._C_emulated")
    except ImportError as e:
        raise ImportError(
            f"fastvit._C_emulated is not built or not loadable ({e}). Reinstall fastvit from its source folder "
            "with `pip install -e .` so CMake compiles it."
        ) from e


@functools.cache
def cuda_module():
    """fastvit._C_cuda, or None when this install was built without a CUDA toolkit."""
    try:
        return importlib.import_module("fastvit._C_cuda")
    except ImportError:
        return None


def require_cuda():
    """fastvit._C_cuda for an op about to run on a GPU, or a RuntimeError saying what is missing."""
    mod = cuda_module()
    if mod is None:
        raise RuntimeError(
            "fastvit._C_cuda was not built (no CUDA toolkit at install time). Reinstall with nvcc on PATH, "
            "or use another backend."
        )
    return mod

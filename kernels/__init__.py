"""fastvit.kernels: the Triton kernels, their host wrappers and their plain-torch references.

The folder sits at the top of the repository and installs as ``fastvit.kernels``; it is never a package
of its own (PyPI's ``kernels`` is another project, and two names for the same files would load every
``@triton.jit`` kernel twice).
"""

if __name__ != "fastvit.kernels":
    raise ImportError(f"the kernels folder is importable only as fastvit.kernels, not as {__name__!r}")

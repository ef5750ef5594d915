"""fastvit.benchmarks: the benchmarks behind `fastvit bench kernels|step|data`; each module has main(argv) -> exit code.

The folder sits at the top of the repository and installs as ``fastvit.benchmarks``.
"""

if __name__ != "fastvit.benchmarks":
    raise ImportError(f"the benchmarks folder is importable only as fastvit.benchmarks, not as {__name__!r}")

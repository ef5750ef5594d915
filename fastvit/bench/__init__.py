"""Benchmarks behind `fastvit bench kernels|step|data`: each module has main(argv) -> exit code."""

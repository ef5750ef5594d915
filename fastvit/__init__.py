"""fastvit: a kernel-centric engine for training vision transformers without language supervision."""

__version__ = "0.1.0"

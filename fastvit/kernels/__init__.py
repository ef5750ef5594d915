"""fastvit.kernels"""

"""fastvit.interop"""

"""fastvit.parallel"""

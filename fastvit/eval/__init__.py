"""fastvit.eval"""

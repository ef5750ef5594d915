"""fastvit.objectives"""

"""fastvit.data"""

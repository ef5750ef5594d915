"""fastvit.models"""

"""fastvit.train"""

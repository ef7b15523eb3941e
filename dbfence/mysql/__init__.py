"""dbfence.mysql"""

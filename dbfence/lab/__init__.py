"""dbfence.lab"""

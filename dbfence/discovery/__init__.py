"""dbfence.discovery"""

"""dbfence.breaker"""

"""dbfence.locks"""

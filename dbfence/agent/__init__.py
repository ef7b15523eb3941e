"""dbfence.agent"""

"""mvcc"""

"""Routing: the compiled table (table.py) shared by the manager and the workers. Pure."""

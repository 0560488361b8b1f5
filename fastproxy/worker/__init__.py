"""The data plane: a worker process (main.py), its listeners and its L4 path. I/O lives here."""

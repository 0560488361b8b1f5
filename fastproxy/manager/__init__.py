"""The control side: manager process (main.py), publisher, supervisor, admin API. I/O lives here."""

"""Config: schema.py (every field documented), env.py (FASTPROXY_*), load.py (validation).

Nothing is imported here, so that a worker importing the schema's constants
does not pay for the YAML loader.
"""

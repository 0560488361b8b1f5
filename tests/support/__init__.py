"""Helpers for the integration and privileged tests: upstream servers the
tests own, the proxy launcher, the admin client and the metrics reader.

One concern per module; see each module's docstring.
"""

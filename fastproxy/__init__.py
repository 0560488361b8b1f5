"""fastproxy: a transparent service-mesh sidecar proxy."""
__version__ = "0.1.0"

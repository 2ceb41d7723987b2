"""The client engine: everything that is not a window; no Qt import."""

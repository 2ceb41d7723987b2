"""Callbox's desktop client: the engine in client.core and the Qt window in client.ui."""

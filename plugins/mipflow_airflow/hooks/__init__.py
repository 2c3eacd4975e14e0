"""Hooks: the connection to a hospital node."""

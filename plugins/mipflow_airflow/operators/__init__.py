"""Operators: federated analyses across nodes."""

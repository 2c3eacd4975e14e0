"""Attacks on a node API: each tries to learn one patient and must fail."""

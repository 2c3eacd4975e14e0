"""Notifiers (``on_*_callback``) of mipflow's tasks."""

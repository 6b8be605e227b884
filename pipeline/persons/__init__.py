"""Persons: corpus-wide identity clusters and the post-pass that writes them into a catalog."""

"""Isolation for converters that parse hostile bytes: one abstraction, several providers."""

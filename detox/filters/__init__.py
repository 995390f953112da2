"""Filters: one module per kind of content, registered under the ``detox.filters`` entry-point group."""

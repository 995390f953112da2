"""The detox pipeline: walk the MIME tree, run filters in the configured order, compose the result."""

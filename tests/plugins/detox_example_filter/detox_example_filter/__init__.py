"""An example detox filter package: Netpbm images re-encoded as PNG, the parsing done in the sandbox."""

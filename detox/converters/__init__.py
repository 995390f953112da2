"""Converters: pure functions main(data, args) -> bytes that run inside the sandbox; never imported by the
server process."""

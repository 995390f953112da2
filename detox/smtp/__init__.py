"""SMTP in: the aiosmtpd handler (policy, spooling) and the listener wiring."""

"""detox: a mail 無害化 (detoxification) gateway for the Internet segment → LGWAN crossing."""

__version__ = "0.1.0"

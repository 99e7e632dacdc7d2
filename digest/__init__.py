"""digest: twice-daily email digests from a publisher's feeds."""

__version__ = "0.1.0"

"""upf_tap: a GTP-U/N6 traffic tap that pulls application events out of 5G user-plane flows."""

__version__ = "0.1.0"

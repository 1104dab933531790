"""Packet decoding below the application layer: link, IP (with reassembly), GTP-U."""

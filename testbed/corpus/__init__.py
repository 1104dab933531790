"""Real application traffic as N3: tunnel captures into GTP-U, build a corpus, score the tap against tshark."""

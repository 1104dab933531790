"""Test (and benchmark) support shared across tests/: tshark as the oracle, frame builders,
workloads. Imported as `tests.support.<module>` everywhere, never by the product packages."""

"""What the tap, the detector and the lab share and none of them owns: wire rules of HTTP delivery
and address parsing. Tiny on purpose, with no dependencies, so each image can ship it."""

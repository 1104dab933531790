"""What the tap, the detector and the lab share and none of them owns: wire rules of HTTP delivery,
address parsing, and the command lines' exit codes and sub-command dispatch. Tiny on purpose, with
no dependencies, so each image can ship it."""

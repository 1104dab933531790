"""The soak and chaos run (bench/bench_soak.py; tests/e2e/test_soak.py): the sim lab at a steady
rate of UE actions while parts fail; every action accounted for at the end."""

"""The benchmark behind `make bench` (scripts/bench.py): outside the library on purpose."""

"""One training run: the path from config to record, the grouped loop, signals, resume, devices."""

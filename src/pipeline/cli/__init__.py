"""Entry points: what a command prints, and the status it exits with (pipeline.exit_codes)."""

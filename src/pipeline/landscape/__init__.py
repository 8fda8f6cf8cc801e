"""Optimizer paths on classic 2-D test functions, driven by the same presets as training."""

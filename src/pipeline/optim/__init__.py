"""Optimizers: the torch class a config names, or its from-scratch twin; hand-derived gradients."""

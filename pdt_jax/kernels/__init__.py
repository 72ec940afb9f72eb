"""Hand-written kernels for paths XLA does not serve well (see ``cpu`` for few-row CPU decode)."""

"""The training engine: the fit loop and its phases, stacked members, the optimizer.

Knows students only as ``nn.Module`` and losses only through the objective it is given."""

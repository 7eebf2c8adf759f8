"""The training engine: the fit loop and its phases (``loop``), stacked members (``members``), the
optimizer (``optim``), the per-member bookkeeping vectorised over the members (``callbacks``), the
history of a fit (``history``) and the state it checkpoints and resumes from (``fit_state``).

Knows students only as ``nn.Module`` and losses only through the objective it is given."""

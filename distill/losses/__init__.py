"""Every loss in one place: the documented KD objective, its fused training form, the hard-loss zoo.

``objective`` holds the formulas; ``fused`` is the closed-form training step checked against them."""

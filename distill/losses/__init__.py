"""Every loss in one place: the objective a student trains with, its fused training form, the loss modules.

``objective`` holds the formulas (the KD objective, the metric term, the validation loss); ``fused`` is
the closed-form training step checked against them; ``penalties`` the L1 / L2 terms; ``hard`` and
``metric`` the loss modules (``hard`` with the registry ``objective.hard`` names); ``conventions`` the
reduction and argument checks they share."""

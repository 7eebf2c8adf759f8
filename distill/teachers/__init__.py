"""Teachers: the ``Teacher`` base class and its registry (``base``), the GP and any scikit-learn
estimator (``gaussian_process``), trained networks (``network``) and objects passed in Python (``given``).

Teachers know nothing of the engine; the experiment layer fits them and reads their soft targets."""

"""Training Stable-Baselines3 agents.

:mod:`.sb3` (``qflgym train``), :mod:`.algorithms` (the algorithm registry and action-space checks),
:mod:`.hyperparams` (zoo-format hyperparameter files).
"""

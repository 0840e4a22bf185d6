"""Evaluation of controllers.

One episode loop (:mod:`.episodes`), episode metrics (:mod:`.metrics`), statistics (:mod:`.stats`).
"""

from qflgym.agents.evaluation.episodes import Episode, evaluate, run_episode
from qflgym.agents.evaluation.metrics import env_target, episode_metrics
from qflgym.agents.evaluation.stats import mean_ci

__all__ = ["Episode", "env_target", "episode_metrics", "evaluate", "mean_ci", "run_episode"]

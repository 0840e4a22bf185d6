"""The benchmark harness behind ``qflgym bench``: controllers × env presets × seeds, run on Ray.

Every (controller, env, seed) is one task; a task builds its env and controller, runs ``episodes_per_seed``
episodes (the first reset with the seed) and returns one row per episode plus the per-round curves.

Modules: :mod:`.suite` (the YAML schema, :func:`~.suite.load_suite`), :mod:`.tasks` (one task,
:func:`~.tasks.run_task`), :mod:`.executors` (serial and Ray), :mod:`.report` (summary and Markdown),
:mod:`.plots` (accuracy curves), :mod:`.run` (:func:`~.run.run_suite`, the files it writes).
"""

from qflgym.agents.bench.run import RESULT_COLUMNS, BenchOutput, run_suite
from qflgym.agents.bench.suite import BenchSuite, ControllerEntry, EnvEntry, ExecutorConfig, load_suite

__all__ = [
    "RESULT_COLUMNS",
    "BenchOutput",
    "BenchSuite",
    "ControllerEntry",
    "EnvEntry",
    "ExecutorConfig",
    "load_suite",
    "run_suite",
]

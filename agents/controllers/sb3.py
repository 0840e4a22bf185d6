"""Trained Stable-Baselines3 models as controllers (registered as ``sb3``).

A model saved by ``qflgym train`` (or any SB3 ``.zip``) is loaded with :meth:`SB3Controller.load`; when the
run directory holds ``vecnormalize.pkl`` its observation statistics are applied, and MaskablePPO models
receive the env's action masks. The algorithm is read from the run's ``config.yaml`` when not given.

An rl-baselines3-zoo run folder (``logs/ppo/QFL-ClientSelection-v1_1``) works the same way: the zoo saves the
model as ``<env>.zip`` (and ``best_model.zip`` with evaluation), and its ``<env>/`` folder holds ``args.yml``
(the algorithm) and ``vecnormalize.pkl``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qflgym.agents.controllers.base import CONTROLLERS, env_attr
from qflgym.agents.training.algorithms import ALGORITHMS
from qflgym.config import ConfigError
from qflgym.runs import CONFIG_FILE

__all__ = ["SB3Controller", "find_model", "infer_algo", "zoo_params_dir"]


class _ZooLoader(yaml.SafeLoader):
    """A safe YAML loader that also reads the ``OrderedDict`` the zoo dumps its ``args.yml`` as."""


_ZooLoader.add_constructor(
    "tag:yaml.org,2002:python/object/apply:collections.OrderedDict",
    lambda loader, node: dict(loader.construct_sequence(node.value[0], deep=True)),
)


def zoo_params_dir(run_dir: Path) -> Path | None:
    """The ``<env>/`` folder of an rl-baselines3-zoo run folder (the one holding ``args.yml``), or None."""
    found = sorted(p.parent for p in run_dir.glob("*/args.yml"))
    return found[0] if found else None


def find_model(path: str | Path) -> Path:
    """Resolve ``path`` (a ``.zip``, a path without suffix, or a run directory) to a model file.

    A run directory resolves to ``best_model.zip`` when present, else ``model.zip``, else (a zoo run folder)
    ``<env>.zip``.

    Raises:
        FileNotFoundError: Naming what was looked for.
    """
    path = Path(path)
    if path.is_dir():
        zoo = zoo_params_dir(path)
        names = ["best_model.zip", "model.zip", *([f"{zoo.name}.zip"] if zoo else [])]
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"none of {', '.join(names)} in run directory {path}")
    if path.is_file():
        return path
    if path.with_suffix(".zip").is_file():
        return path.with_suffix(".zip")
    raise FileNotFoundError(f"model file not found: {path}")


def infer_algo(model_path: Path) -> str | None:
    """The algorithm name from the run directory holding ``model_path``.

    Read from ``config.yaml`` (qflgym) or the zoo's ``<env>/args.yml`` (the zoo's algorithm names that qflgym
    has are spelled the same).
    """
    for folder in (model_path.parent, model_path.parent.parent):
        record = folder / CONFIG_FILE
        if record.is_file():
            algo = (yaml.safe_load(record.read_text()) or {}).get("algo")
            if algo:
                return str(algo)
    zoo = zoo_params_dir(model_path.parent)
    if zoo is not None:
        algo = (yaml.load((zoo / "args.yml").read_text(), Loader=_ZooLoader) or {}).get("algo")
        if algo:
            return str(algo)
    return None


class SB3Controller:
    """A Stable-Baselines3 model behind the controller protocol.

    Args:
        model: A trained SB3 algorithm instance.
        obs_normalizer: Optional unpickled ``VecNormalize`` whose ``normalize_obs`` is applied first.
        name: The algorithm name (for reports).
    """

    def __init__(self, model: Any, obs_normalizer: Any = None, name: str = "sb3") -> None:
        self.model = model
        self.obs_normalizer = obs_normalizer
        self.name = name
        spec = ALGORITHMS.get(name) if name in ALGORITHMS else None
        self.uses_action_masks = bool(spec and spec.uses_action_masks)

    @classmethod
    def load(cls, path: str | Path, algo: str | None = None, device: str = "cpu") -> SB3Controller:
        """Load a saved model (a ``.zip`` or a run directory).

        Args:
            path: Model file or run directory.
            algo: Algorithm name; default read from the run's ``config.yaml``, else tried in turn.
            device: Torch device.
        """
        model_path = find_model(path)
        algo = algo or infer_algo(model_path)
        names = [algo] if algo else ALGORITHMS.names()
        errors = []
        for name in names:
            try:
                model = ALGORITHMS.get(name).load_class().load(str(model_path), device=device)
                break
            except Exception as err:  # try the next algorithm, report all failures below
                errors.append(f"{name}: {err}")
        else:
            raise ConfigError(f"could not load {model_path} as any of {', '.join(names)}: {'; '.join(errors)}")
        normalizer = None
        zoo = zoo_params_dir(model_path.parent)
        stats = model_path.parent / "vecnormalize.pkl"
        if not stats.is_file() and zoo is not None:
            stats = zoo / "vecnormalize.pkl"
        if stats.is_file():
            with stats.open("rb") as fh:
                normalizer = pickle.load(fh)
            normalizer.training = False
        return cls(model, normalizer, name=name)

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict``, with observation normalization and action masks applied when relevant."""
        if self.obs_normalizer is not None:
            observation = self.obs_normalizer.normalize_obs(np.asarray(observation, dtype=np.float32))
        if self.uses_action_masks:
            return self.model.predict(observation, state, episode_start, deterministic, action_masks=action_masks)
        return self.model.predict(observation, state, episode_start, deterministic)

    def __repr__(self) -> str:
        return f"SB3Controller({type(self.model).__name__})"


@CONTROLLERS.register("sb3")
def sb3(env: Any, *, seed: int | None = None, path: str = "", algo: str | None = None) -> SB3Controller:
    """A trained SB3 model loaded from ``path`` (a ``.zip`` or a ``qflgym train`` run directory).

    Args:
        env: The env the model will act on (its spaces are checked against the model's; an equivariant policy
            trained with another number of clients is rebuilt for it).
        seed: Unused (a model's stochasticity is set by ``deterministic``).
        path: Model file or run directory.
        algo: Algorithm name (ppo, a2c, dqn, sac, td3, maskable-ppo); default read from the run directory.
    """
    from qflgym.agents.policies import adapt_model, is_equivariant

    if not path:
        raise ConfigError("controller 'sb3' needs path= (a model .zip or a qflgym train run directory)")
    controller = SB3Controller.load(path, algo=algo)
    obs_space = env_attr(env, "observation_space")
    act_space = env_attr(env, "action_space")
    model = controller.model
    same_spaces = model.observation_space == obs_space and model.action_space == act_space
    if not same_spaces and is_equivariant(model) and controller.obs_normalizer is None:
        controller.model = adapt_model(model, env)  # per-client weights: the same policy for another N
    elif model.observation_space.shape != obs_space.shape or model.action_space != act_space:
        raise ConfigError(
            f"model {path} was trained on observation {model.observation_space.shape} / action "
            f"{model.action_space}, but the env has observation {obs_space.shape} / action {act_space}"
        )
    return controller

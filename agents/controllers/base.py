"""The controller contract: one ``predict`` protocol for heuristics, SB3 models and LLM policies; one registry of names.

Everything that acts on a qflgym env implements Stable-Baselines3's prediction protocol::

    action, state = controller.predict(observation, state=None, episode_start=None, deterministic=False)

``observation`` is one flat observation or a batch of them (one row per sub-env of a ``VecEnv``); the action
comes back with the same leading shape. That is all the evaluation loop (:mod:`qflgym.agents.evaluation`) and
the benchmark harness (:mod:`qflgym.agents.bench`) need, so a heuristic, a trained SB3 model and an LLM
policy are benchmarked by the same code.

Controllers are built by name from :data:`CONTROLLERS`::

    controller = make_controller("power-of-choice", env, seed=0, k=3, d=6)

A registry entry is a factory ``factory(env, *, seed=None, **kwargs) -> controller``. Third-party packages add
entries through the entry-point group ``qflgym.controllers``; modules listed in :data:`PLUGIN_MODULES` (the
LLM policies in :mod:`qflgym.agents.llm`) are imported on the first lookup that misses, so they register
themselves without this module importing anything heavy.

Controllers may optionally define:

* ``uses_action_masks`` (bool attribute): the evaluation loop then passes ``action_masks=`` to ``predict``
  (sb3-contrib's ``MaskablePPO`` models, for instance);
* ``episode_metrics() -> dict[str, float]``: extra per-episode numbers (e.g. an LLM policy's invalid-output
  rate), called once at the end of every evaluated episode and written to the benchmark's ``results.csv``.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from qflgym.config import ConfigError
from qflgym.registry import Registry, import_available

__all__ = [
    "CONTROLLERS",
    "PLUGIN_MODULES",
    "Controller",
    "PredictProtocol",
    "check_kwargs",
    "controller_kwargs",
    "controller_names",
    "env_attr",
    "get_action_masks",
    "make_controller",
]


@runtime_checkable
class PredictProtocol(Protocol):
    """Anything with Stable-Baselines3's ``predict`` signature (SB3 models satisfy it as they are)."""

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        """Return ``(action, state)`` for one observation or a batch of them."""
        ...


#: A factory ``factory(env, *, seed=None, **kwargs)`` building a controller for ``env`` (an env or a VecEnv).
ControllerFactory = Callable[..., PredictProtocol]

#: Controllers by name (heuristics, ``sb3``, ``composite``; the LLM policies register into it too).
CONTROLLERS: Registry[ControllerFactory] = Registry("controller", entry_point_group="qflgym.controllers")

#: Modules imported (when installed) before a controller lookup fails; they register their own entries.
PLUGIN_MODULES: tuple[str, ...] = ("qflgym.agents.llm",)

#: The built-in controller modules (imported on the first lookup); a new controller family adds its module here.
_BUILTIN_MODULES: tuple[str, ...] = (
    "qflgym.agents.controllers.composite",
    "qflgym.agents.controllers.sb3",
    "qflgym.agents.controllers.lookahead",
)
_plugins_loaded = False


def _load_modules() -> None:
    """Import the built-in controller modules and the available plugin modules (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    import_available(PLUGIN_MODULES)


def controller_names() -> list[str]:
    """Names of every registered controller (built-ins, plugins and entry points)."""
    _load_modules()
    return CONTROLLERS.names()


def make_controller(name: str, env: Any, *, seed: int | None = None, **kwargs: Any) -> PredictProtocol:
    """Build the controller registered as ``name`` for ``env``.

    Args:
        name: A name from :func:`controller_names` (e.g. ``"random-k"``, ``"oort"``, ``"sb3"``).
        env: The env (``gym.Env``, possibly wrapped) or ``VecEnv`` the controller will act on; controllers
            read ``layout`` and ``action_codec`` from it.
        seed: Seed of the controller's own randomness (randomized heuristics).
        **kwargs: The controller's keyword arguments (see its docstring).

    Raises:
        UnknownNameError: Naming the allowed controllers when ``name`` is unknown.
        ConfigError: Naming the allowed keyword arguments when one is unknown.
    """
    _load_modules()
    factory = CONTROLLERS.get(name)
    check_kwargs(f"controller {name!r}", factory, kwargs, skip=("env", "seed", "self"))
    return factory(env, seed=seed, **kwargs)


def controller_kwargs(name: str) -> list[str]:
    """Keyword arguments accepted by the controller ``name`` (besides ``env`` and ``seed``)."""
    _load_modules()
    factory = CONTROLLERS.get(name)
    params = inspect.signature(factory).parameters
    return [p for p, v in params.items() if p not in ("env", "seed", "self") and v.kind is not v.VAR_KEYWORD]


def check_kwargs(what: str, factory: Callable[..., Any], kwargs: Mapping[str, Any], skip: Sequence[str]) -> None:
    """Raise a ``ConfigError`` naming the allowed keyword arguments when ``kwargs`` has one ``factory`` lacks.

    Args:
        what: What is being built, for the message (``controller 'oort'``).
        factory: The callable the arguments are for.
        kwargs: The keyword arguments.
        skip: Parameters that are not the user's to pass (``self``, ``env``, ...).
    """
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in skip]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{what} got unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
        )


def env_attr(env: Any, name: str) -> Any:
    """Read attribute ``name`` of the (unwrapped) env behind ``env``, which may be a VecEnv or a wrapper."""
    if hasattr(env, "get_attr") and hasattr(env, "num_envs"):  # a stable-baselines3 VecEnv
        return env.get_attr(name, indices=[0])[0]
    unwrapped = getattr(env, "unwrapped", env)
    if hasattr(unwrapped, name):
        return getattr(unwrapped, name)
    return getattr(env, name)


def get_action_masks(env: Any) -> np.ndarray:
    """Return the action masks of ``env`` (``[n_envs, ...]`` for a VecEnv, ``[...]`` for a single env)."""
    if hasattr(env, "env_method") and hasattr(env, "num_envs"):
        return np.stack([np.asarray(m) for m in env.env_method("action_masks")])
    unwrapped = getattr(env, "unwrapped", env)
    return np.asarray(unwrapped.action_masks())


class Controller(ABC):
    """Base class of controllers that decide one env at a time from its flat observation.

    Subclasses implement :meth:`act`, which maps one observation row to one env action. :meth:`predict`
    handles batching (a single observation or one row per sub-env), per-env memory and episode starts, so
    a controller instance serves a single env or a whole ``VecEnv``.

    Memory: ``self.memory[i]`` is a dict private to sub-env ``i``. It is cleared when ``episode_start[i]`` is
    true, or -- for callers that do not pass ``episode_start`` -- when :meth:`is_episode_start` recognizes a
    reset observation. Use one controller instance per (vectorized) env.

    Args:
        env: The env or VecEnv the controller acts on.
        seed: Seed of the controller's random generator :attr:`rng`.
    """

    #: Whether ``predict`` wants ``action_masks=`` (the evaluation loop passes them when true).
    uses_action_masks: ClassVar[bool] = False

    def __init__(self, env: Any, *, seed: int | None = None) -> None:
        space = env_attr(env, "observation_space")
        if not hasattr(space, "shape") or space.shape is None or len(space.shape) != 1:
            raise TypeError(
                f"{type(self).__name__} needs the flat Box observation of a qflgym env, got {space}; "
                "create the env with its default (flat) observation"
            )
        self.obs_shape: tuple[int, ...] = tuple(space.shape)
        self.rng = np.random.default_rng(seed)
        self.memory: list[dict[str, Any]] = []

    def reset(self, seed: int | None = None) -> None:
        """Forget all per-env memory and, when ``seed`` is given, reseed :attr:`rng`."""
        self.memory = []
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | Sequence[bool] | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """Return ``(action, state)`` following Stable-Baselines3's protocol.

        Args:
            observation: One flat observation ``[D]`` or a batch ``[n_envs, D]``.
            state: Passed through unchanged (heuristics keep their memory per sub-env instead).
            episode_start: ``[n_envs]`` flags, true where a new episode begins (as SB3's evaluation passes
                them).
            deterministic: Ignored by deterministic rules; randomized rules still use their own seeded ``rng``
                (their randomness is part of the rule).
            action_masks: Optional masks; heuristics read availability from the observation instead.

        Returns:
            The action (or batch of actions) and ``state``.
        """
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.shape == self.obs_shape
        if single:
            obs = obs[None]
        elif obs.ndim != 2 or obs.shape[1:] != self.obs_shape:
            raise ValueError(
                f"{type(self).__name__}.predict expects an observation of shape {self.obs_shape} or a batch "
                f"[n_envs, {self.obs_shape[0]}], got shape {obs.shape}"
            )
        n = obs.shape[0]
        while len(self.memory) < n:
            self.memory.append({})
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        starts = np.broadcast_to(starts.reshape(-1), (n,)) if starts.size in (1, n) else starts
        actions = []
        for i in range(n):
            if starts[i] or self.is_episode_start(obs[i]):
                self.memory[i] = {}
            actions.append(self.act(obs[i], self.memory[i]))
        stacked = np.stack([np.asarray(a) for a in actions])
        return (stacked[0] if single else stacked), state

    def is_episode_start(self, obs: np.ndarray) -> bool:
        """Whether ``obs`` is the first observation of an episode (override when detectable)."""
        return False

    @abstractmethod
    def act(self, obs: np.ndarray, memory: dict[str, Any]) -> Any:
        """Return the env action for one flat observation.

        Args:
            obs: One flat observation.
            memory: This sub-env's private memory (empty at the start of an episode).
        """

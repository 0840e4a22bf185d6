"""Train Stable-Baselines3 (and sb3-contrib) agents on qflgym envs: the engine behind ``qflgym train``.

A run is described by a :class:`TrainConfig` (each field documented; it doubles as the CLI) plus the
hyperparameters of the env id in a zoo-format YAML file (:mod:`qflgym.agents.training.hyperparams`). :func:`train`

1. checks that the algorithm supports the env's action space (the error lists the algorithms that do),
2. builds ``n_envs`` vectorized training envs (seeds ``seed .. seed + n_envs - 1``) and one evaluation env
   (seed ``seed + EVAL_SEED_OFFSET``, so evaluation episodes differ from training ones and from the benchmark
   evaluation seeds 10000..),
3. with ``pretrain``, warm-starts the policy by behaviour cloning a teacher controller (and DAgger rounds,
   :mod:`qflgym.agents.training.imitation`), saved as ``pretrained_model.zip``,
4. trains with an ``EvalCallback`` (the best model is kept) and a ``CheckpointCallback``, logging to
   TensorBoard and showing a progress bar,
5. writes the run directory::

       runs/<algo>/<env>__s<seed>__<time>/
         model.zip            final model          best_model.zip     best periodic evaluation
         checkpoints/         periodic snapshots   evaluations.npz    EvalCallback's log
         tb/                  TensorBoard logs     vecnormalize.pkl   observation statistics (normalize: true)
         config.yaml          every resolved setting and seed    command.txt   the command line
         run.json             package versions (the record of :func:`qflgym.runs.write_run_record`)
         hyperparams.yml      the hyperparameters actually used, in zoo format (re-runnable with --hyperparams)
         metrics.json         timesteps, seconds, steps per second (and the pretraining's figures)
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from qflgym.agents.runtime import check_env_id, limited_threads, make_env, make_vec_env
from qflgym.agents.training.algorithms import check_action_space
from qflgym.agents.training.hyperparams import default_hyperparams_path, load_hyperparams, resolve
from qflgym.agents.training.imitation import PretrainConfig, PretrainResult, pretrain
from qflgym.config import ConfigError, StrictModel, build_config
from qflgym.runs import to_yaml_safe, write_run_record

__all__ = ["EVAL_SEED_OFFSET", "TrainConfig", "TrainResult", "run_name", "train"]

#: The periodic-evaluation env of a run seeded ``seed`` uses seed ``seed + EVAL_SEED_OFFSET``.
EVAL_SEED_OFFSET = 50_000


class TrainConfig(StrictModel):
    """Everything that defines a training run (the fields double as ``qflgym train``'s options)."""

    algo: str
    """Algorithm: ppo, a2c, dqn, sac, td3, maskable-ppo."""
    env: str
    """Env id, e.g. ``QFL/ClientSelection-v0``."""
    env_config: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the env's ``default_config()`` (passed as ``gym.make(env, config=...)``)."""
    hyperparams: str | None = None
    """Zoo-format YAML with the hyperparameters; default the packaged ``configs/agents/<algo>.yml``."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Hyperparameter overrides applied on top of the file (``--set key=value``)."""
    timesteps: int | None = Field(None, ge=0)
    """Total env steps; default the file's ``n_timesteps``; 0 with ``pretrain``: the cloned policy only."""
    seed: int = Field(0, ge=0)
    """Seed of the algorithm and of the training envs (``seed + i`` for sub-env i)."""
    n_envs: int | None = Field(None, ge=1)
    """Number of vectorized training envs; default the file's ``n_envs`` (else 1)."""
    vec_env: Literal["dummy", "subproc", "batched"] = "dummy"
    """VecEnv class: ``dummy`` (sequential, in process), ``subproc`` (one process per env) or ``batched`` (one
    process, every env's round in shared simulator calls: :class:`qflgym.envs.sb3_vec_env.BatchedVecEnv`)."""
    out: str = "runs"
    """Parent folder of the run directory."""
    run_name: str | None = None
    """Run directory name; default ``<env>__s<seed>__<time>`` under ``<out>/<algo>/``."""
    eval_freq: int = Field(10_000, ge=0)
    """Evaluate every this many env steps (0 disables periodic evaluation)."""
    eval_episodes: int = Field(5, ge=1)
    """Episodes per periodic evaluation."""
    save_freq: int = Field(50_000, ge=0)
    """Save a checkpoint every this many env steps (0 disables checkpoints)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard logs to ``<run>/tb``."""
    device: str = "cpu"
    """Torch device of the policy."""
    torch_threads: int | None = Field(1, ge=1)
    """Torch and BLAS threads of the trainer and of every env subprocess (1 is fastest for small circuits and
    MLPs, see :mod:`qflgym.agents.runtime`); None leaves the libraries' defaults."""
    verbose: int = Field(0, ge=0, le=2)
    """SB3 verbosity."""
    pretrain: PretrainConfig | None = None
    """Behaviour-cloning warm start from a teacher controller (on-policy algorithms without ``normalize``)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced.

    Attributes:
        run_dir: The run directory.
        model_path: The final model (``model.zip``).
        best_model_path: The best periodically evaluated model, or None without periodic evaluation.
        timesteps: Env steps trained.
        seconds: Wall-clock seconds of ``learn``.
        pretrained: What the behaviour-cloning warm start did (None without ``pretrain``).
    """

    run_dir: Path
    model_path: Path
    best_model_path: Path | None
    timesteps: int
    seconds: float
    pretrained: PretrainResult | None = None

    @property
    def steps_per_second(self) -> float:
        """Training throughput in env steps per second."""
        return self.timesteps / self.seconds if self.seconds > 0 else float("nan")


def run_name(env_id: str, seed: int) -> str:
    """``<env>__s<seed>__<YYYYmmdd-HHMMSS>`` (slashes in the env id become dashes)."""
    return f"{env_id.replace('/', '-')}__s{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: TrainConfig | dict[str, Any], argv: list[str] | None = None) -> TrainResult:
    """Train one agent and write its run directory (see the module docstring).

    Args:
        config: The run's settings (a :class:`TrainConfig` or a plain mapping validated into one).
        argv: The command line to record (default ``sys.argv``).

    Raises:
        ConfigError: Invalid settings or hyperparameters (naming the field and the allowed values).
        KeyError: Unknown algorithm (naming the known ones).
        UnsupportedActionSpaceError: The algorithm cannot act in the env's action space.
        FileNotFoundError: A missing hyperparameter file.
    """
    cfg = config if isinstance(config, TrainConfig) else build_config(TrainConfig, config, "train")
    with limited_threads(cfg.torch_threads):
        return _train(cfg, argv)


def _train(cfg: TrainConfig, argv: list[str] | None) -> TrainResult:
    check_env_id(cfg.env)
    probe = make_env(cfg.env, cfg.env_config)
    try:
        algo_spec = check_action_space(cfg.algo, probe.action_space, cfg.env)
    finally:
        probe.close()

    hp_path = Path(cfg.hyperparams) if cfg.hyperparams else default_hyperparams_path(cfg.algo)
    file_hp, found = load_hyperparams(hp_path, cfg.env) if hp_path.is_file() or cfg.hyperparams else ({}, False)
    if not found:
        print(f"note: no hyperparameters for {cfg.env} in {hp_path}; using SB3's defaults", file=sys.stderr)
    hyperparams = {**file_hp, **cfg.overrides}
    algo_class = algo_spec.load_class()
    trainer, algo_kwargs = resolve(
        algo_class,
        hyperparams,
        source=f"{hp_path} [{cfg.env}]",
        sources={key: f"--set {key}={value}" for key, value in cfg.overrides.items()},
    )
    timesteps = trainer.get("n_timesteps") if cfg.timesteps is None else cfg.timesteps
    if not timesteps and not (timesteps == 0 and cfg.pretrain is not None):
        raise ConfigError(
            f"no training budget: pass timesteps (0 only with pretrain) or set n_timesteps for {cfg.env} in {hp_path}"
        )
    n_envs = cfg.n_envs or int(trainer.get("n_envs", 1))
    normalize = trainer.get("normalize", False)
    if cfg.pretrain is not None and (algo_spec.off_policy or normalize):
        raise ConfigError(
            f"pretrain: behaviour cloning warm-starts an actor-critic policy on raw observations; got algo="
            f"{cfg.algo!r} with normalize={normalize!r}; allowed: ppo, a2c or maskable-ppo without normalize"
        )
    policy = trainer.get("policy", "MlpPolicy")

    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import VecNormalize

    from qflgym.agents.policies import resolve_policy

    set_random_seed(cfg.seed)
    run_dir = Path(cfg.out) / cfg.algo / (cfg.run_name or run_name(cfg.env, cfg.seed))

    train_seeds = [cfg.seed + i for i in range(n_envs)]
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    resolved_hp = {**hyperparams, "n_envs": n_envs, "n_timesteps": int(timesteps), "policy": policy}
    args = {
        **cfg.model_dump(),
        "hyperparams": str(hp_path),
        "hyperparams_found": found,
        "timesteps": int(timesteps),
        "n_envs": n_envs,
        "train_env_seeds": train_seeds,
        "eval_env_seed": eval_seed if cfg.eval_freq else None,
        "resolved_hyperparams": resolved_hp,
    }
    write_run_record(run_dir, args, argv)
    (run_dir / "hyperparams.yml").write_text(yaml.safe_dump({cfg.env: to_yaml_safe(resolved_hp)}, sort_keys=False))

    venv = make_vec_env(cfg.env, n_envs, cfg.seed, cfg.env_config, cfg.vec_env, cfg.torch_threads)
    norm_kwargs = normalize if isinstance(normalize, dict) else {}
    if normalize:
        venv = VecNormalize(venv, **{"norm_reward": True, **norm_kwargs})

    callbacks: list[Any] = []
    best_path: Path | None = None
    eval_env = None
    if cfg.eval_freq:
        eval_env = make_vec_env(cfg.env, 1, eval_seed, cfg.env_config)
        if normalize:
            eval_env = VecNormalize(
                eval_env,
                training=False,
                norm_reward=False,
                **{k: v for k, v in norm_kwargs.items() if k != "norm_reward"},
            )
        if algo_spec.uses_action_masks:
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as EvalCallback
        else:
            from stable_baselines3.common.callbacks import EvalCallback
        callbacks.append(
            EvalCallback(
                eval_env,
                n_eval_episodes=cfg.eval_episodes,
                eval_freq=max(cfg.eval_freq // n_envs, 1),
                best_model_save_path=str(run_dir),
                log_path=str(run_dir),
                deterministic=True,
                verbose=cfg.verbose,
            )
        )
        best_path = run_dir / "best_model.zip"
    if cfg.save_freq:
        callbacks.append(
            CheckpointCallback(
                save_freq=max(cfg.save_freq // n_envs, 1),
                save_path=str(run_dir / "checkpoints"),
                name_prefix="model",
                save_vecnormalize=bool(normalize),
            )
        )

    model = algo_class(
        resolve_policy(policy, algo_class),
        venv,
        seed=cfg.seed,
        device=cfg.device,
        verbose=cfg.verbose,
        tensorboard_log=str(run_dir / "tb") if cfg.tensorboard else None,
        **algo_kwargs,
    )
    pretrained = None
    if cfg.pretrain is not None:
        pretrained = _pretrain(model, cfg, cfg.pretrain, algo_spec.uses_action_masks, run_dir)
    start = time.perf_counter()
    try:
        if timesteps:
            model.learn(total_timesteps=int(timesteps), callback=callbacks, progress_bar=cfg.progress)
    finally:
        seconds = time.perf_counter() - start
        model.save(str(run_dir / "model.zip"))
        if normalize:
            venv.save(str(run_dir / "vecnormalize.pkl"))
        venv.close()
        if eval_env is not None:
            eval_env.close()
    result = TrainResult(
        run_dir=run_dir,
        model_path=run_dir / "model.zip",
        best_model_path=best_path if best_path is not None and best_path.is_file() else None,
        timesteps=int(model.num_timesteps),
        seconds=seconds,
        pretrained=pretrained,
    )
    metrics = {
        "timesteps": result.timesteps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(result.steps_per_second, 2),
    }
    if pretrained is not None:
        metrics["pretrain"] = {
            "seconds": round(pretrained.seconds, 3),
            "demonstration_steps": pretrained.steps,
            "teacher_objective": pretrained.teacher_objective if math.isfinite(pretrained.teacher_objective) else None,
            "dagger_objectives": pretrained.dagger_objectives,
            "first_loss": pretrained.clone.first_loss,
            "last_loss": pretrained.clone.last_loss,
            "agreement": pretrained.clone.agreement,
        }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return result


def _pretrain(
    model: Any, cfg: TrainConfig, settings: PretrainConfig, action_masks: bool, run_dir: Path
) -> PretrainResult:
    """Behaviour-clone the teacher of ``settings`` into ``model`` and save it as ``pretrained_model.zip``."""
    env = make_env(cfg.env, cfg.env_config)
    try:
        result = pretrain(model, env, settings, cfg.seed, action_masks, progress=cfg.progress)
    finally:
        env.close()
    model.save(str(run_dir / "pretrained_model.zip"))
    return result

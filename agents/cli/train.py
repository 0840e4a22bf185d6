"""``qflgym train``: train an SB3 / sb3-contrib agent (:func:`qflgym.agents.training.sb3.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qflgym.agents.cli.args import console, mapping_arg
from qflgym.agents.cli.commands import Command


def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", required=True, help="ppo, a2c, dqn, sac, td3 or maskable-ppo")
    p.add_argument("--env", required=True, help="env id, e.g. QFL/ClientSelection-v0")
    p.add_argument("--env-config", help="env config overrides: inline YAML ('{n_clients: 8}') or a YAML file")
    p.add_argument(
        "--hyperparams",
        "--conf-file",
        dest="hyperparams",
        help="zoo-format YAML keyed by env id (default: the packaged configs/agents/<algo>.yml)",
    )
    p.add_argument(
        "--set",
        "-params",
        dest="overrides",
        nargs="+",
        metavar="KEY=VALUE",
        help="hyperparameter overrides, e.g. --set n_steps=256 learning_rate=lin_1e-3",
    )
    p.add_argument(
        "--timesteps",
        "-n",
        type=int,
        help="total env steps (default: the file's n_timesteps; 0 with --pretrain: clone only)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the algorithm and training envs (default 0)")
    p.add_argument("--n-envs", type=int, help="vectorized training envs (default: the file's n_envs, else 1)")
    p.add_argument(
        "--vec-env",
        choices=("dummy", "subproc", "batched"),
        default="dummy",
        help="VecEnv class: dummy (sequential), subproc (a process per env) or batched (one process, every env's "
        "round in shared simulator calls)",
    )
    p.add_argument("--out", default="runs", help="parent folder of the run directory (default runs/)")
    p.add_argument("--run-name", help="run directory name (default <env>__s<seed>__<time>)")
    p.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (0: never)")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per periodic evaluation")
    p.add_argument("--save-freq", type=int, default=50_000, help="checkpoint every N env steps (0: never)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch/BLAS threads per process (default 1: fastest for small circuits and MLPs)",
    )
    p.add_argument(
        "--pretrain",
        help="behaviour-cloning warm start, inline YAML or a file: '{teacher: cost-aware, teacher_kwargs: {k: 3}, "
        "dagger_iterations: 4}' (fields: qflgym.agents.training.imitation.PretrainConfig)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="SB3 verbosity")


def _run_train(args: argparse.Namespace) -> int:
    from qflgym.agents.training.algorithms import ALGORITHMS
    from qflgym.agents.training.hyperparams import parse_overrides
    from qflgym.agents.training.sb3 import train

    ALGORITHMS.get(args.algo)  # unknown algorithm: fail before building anything
    if args.hyperparams and not Path(args.hyperparams).is_file():
        raise FileNotFoundError(f"hyperparameter file not found: {args.hyperparams}")
    config = {
        "algo": args.algo,
        "env": args.env,
        "env_config": mapping_arg(args.env_config, "--env-config"),
        "hyperparams": args.hyperparams,
        "overrides": parse_overrides(args.overrides),
        "timesteps": args.timesteps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "vec_env": args.vec_env,
        "out": args.out,
        "run_name": args.run_name,
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
        "save_freq": args.save_freq,
        "progress": not args.no_progress,
        "tensorboard": not args.no_tensorboard,
        "device": args.device,
        "torch_threads": args.torch_threads,
        "verbose": args.verbose,
        "pretrain": mapping_arg(args.pretrain, "--pretrain") or None,
    }
    result = train(config, argv=args.argv)
    out = console()
    out.print(
        f"[bold green]trained[/] {args.algo} on {args.env}: {result.timesteps} steps in "
        f"{result.seconds:.1f} s "
        f"({result.steps_per_second:.0f} steps/s)"
    )
    out.print(f"run directory: {result.run_dir}", soft_wrap=True)
    out.print(f"final model:   {result.model_path}", soft_wrap=True)
    if result.best_model_path:
        out.print(f"best model:    {result.best_model_path}", soft_wrap=True)
    return 0


COMMAND = Command(
    "train",
    "train an SB3 / sb3-contrib agent on a qflgym env",
    _configure_train,
    _run_train,
    "Train ppo, a2c, dqn, sac, td3 or maskable-ppo with zoo-format hyperparameters; writes a run "
    "directory with the resolved config, the command line, TensorBoard logs, checkpoints and models.",
)

"""``qflgym llm``: distil (``sft``), RL fine-tune (``grpo``), evaluate (``eval``) and prepare LLM policies.

Registered into the ``qflgym`` CLI through :data:`qflgym.agents.cli.commands.COMMANDS` (this module is listed in
:data:`qflgym.agents.cli.main.COMMAND_MODULES`). :func:`add_llm_subcommands` adds the group to any ``argparse``
subparsers object, for tools that build their own parser. Options of ``sft`` and ``grpo`` are the fields of
:class:`~qflgym.agents.llm.train.sft_config.LLMSFTConfig` and
:class:`~qflgym.agents.llm.train.grpo_config.LLMGRPOConfig` (``--config FILE.yaml`` sets any of them; explicit
flags win).

Examples::

    qflgym llm prepare                                      # convert Gemma-3 270M once (cached)
    qflgym llm sft --env-id QFL/ClientSelection-v0 --teacher runs/ppo/<run> --model gemma3-270m
    qflgym llm grpo --init-policy runs/llm/sft/<run>/policy --max-steps 50
    qflgym llm eval --policy runs/llm/grpo/<run>/policy --episodes 5
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qflgym.agents.cli.args import cell, console, mapping_arg, metrics_table, nan_mean
from qflgym.agents.cli.commands import COMMANDS, Command, UserInputError

__all__ = ["COMMAND", "add_llm_subcommands", "configure"]


def _configure_sft(p: argparse.ArgumentParser) -> None:
    from qflgym.agents.llm.train.cli_args import add_dataclass_arguments
    from qflgym.agents.llm.train.sft_config import LLMSFTConfig

    add_dataclass_arguments(p, LLMSFTConfig)
    p.set_defaults(run=_run_sft)


def _configure_grpo(p: argparse.ArgumentParser) -> None:
    from qflgym.agents.llm.train.cli_args import add_dataclass_arguments
    from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig

    add_dataclass_arguments(p, LLMGRPOConfig)
    p.set_defaults(run=_run_grpo)


def _configure_eval(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", help="a saved policy directory (the policy/ folder of an sft or grpo run)")
    who.add_argument("--model", help="an untrained base model: tiny, gemma3-270m or a checkpoint directory")
    p.add_argument("--env", "--env-id", dest="env", help="env id (default: the one the policy was trained on)")
    p.add_argument("--env-config", help="env config overrides: inline YAML or a YAML file (default: the policy's)")
    p.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    p.add_argument("--seed", type=int, default=100_000, help="seed of the first episode (default 100000)")
    p.add_argument("--stochastic", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--free", action="store_true", help="unconstrained generation (measures raw format errors)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="model dtype (default: the policy's training dtype, else float32)",
    )
    p.add_argument(
        "--teacher",
        help="also evaluate this controller on the same seeds (name or SB3 path; the policy's own teacher acts as "
        "it did when distilled)",
    )
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (1 is faster on a busy machine)")
    p.add_argument("--json", dest="json_path", help="write the per-episode rows (and summary) as JSON")


def _configure_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma3-270m", help="model to convert and cache (default gemma3-270m)")
    p.set_defaults(run=_run_prepare)


def _configure_models(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=_run_models)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``llm`` sub-subcommands to ``parser`` (the ``llm`` command's own parser)."""
    sub = parser.add_subparsers(dest="llm_command", metavar="LLM_COMMAND", required=True)
    commands = (
        ("sft", "distil a controller (or an SB3 model) into the LLM policy with TRL SFT + an adapter", _configure_sft),
        ("grpo", "RL fine-tuning in the env loop with TRL GRPO (env reward + format term)", _configure_grpo),
        ("eval", "evaluate a saved LLM policy (return, accuracy, rounds, invalid rate, latency)", _configure_eval),
        (
            "prepare",
            "convert and cache a packaged model once (Gemma-3 270M GGUF -> fp32 checkpoint)",
            _configure_prepare,
        ),
        ("models", "list the registered models and adapters", _configure_models),
    )
    for name, help_text, conf in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        conf(p)
        if name == "eval":
            p.set_defaults(run=_run_eval)


def add_llm_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``llm`` group to an ``argparse`` subparsers object; return its parser."""
    p = subparsers.add_parser("llm", help="LLM policies: sft, grpo, eval, prepare")
    configure(p)
    return p


# -------------------------------------------------------------------------------------------------- runners
def _run_sft(args: argparse.Namespace) -> int:
    from qflgym.agents.llm.train.sft_config import LLMSFTConfig
    from qflgym.agents.llm.train.sft_trainer import LLMSFTTrainer

    return _train(
        LLMSFTConfig,
        LLMSFTTrainer,
        args,
        lambda r: [
            f"pairs {r.n_pairs}  teacher return {r.teacher_return:.4f}  s/step {r.s_per_step:.3f}",
            *([f"loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}"] if r.losses else []),
        ],
    )


def _run_grpo(args: argparse.Namespace) -> int:
    from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
    from qflgym.agents.llm.train.grpo_trainer import LLMGRPOTrainer

    return _train(
        LLMGRPOConfig,
        LLMGRPOTrainer,
        args,
        lambda r: [
            f"states {r.n_states}  s/step {r.s_per_step:.3f}",
            *([f"reward {r.rewards[0]:.4f} -> {r.rewards[-1]:.4f}"] if r.rewards else []),
        ],
    )


def _train(config_cls: type, trainer_cls: type, args: argparse.Namespace, lines: Callable[[Any], list[str]]) -> int:
    """Train from the command line's config, print ``lines(result)``, the evaluation and where the policy is."""
    from qflgym.agents.llm.train.cli_args import dataclass_from_args

    result = trainer_cls(dataclass_from_args(config_cls, args)).train()
    print("\n".join(lines(result)))
    _print_evaluation(result.evaluation)
    print(f"policy saved to {result.policy_dir}")
    return 0


def _print_evaluation(evaluation: dict[str, dict[str, float]]) -> None:
    for who, summary in evaluation.items():
        keys = ("return", "final_accuracy", "rounds", "rounds_to_target", "invalid_rate")
        text = "  ".join(f"{k} {summary[k]:.4f}" for k in keys if k in summary)
        print(f"eval {who}: {text}")


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from qflgym.agents.evaluation import evaluate
    from qflgym.agents.llm.policy import POLICY_META, LLMPolicy, load_policy
    from qflgym.agents.llm.train.rollout import make_teacher, teacher_options
    from qflgym.agents.runtime import check_env_id, make_env

    if args.episodes < 1:
        raise UserInputError(f"--episodes must be >= 1, got {args.episodes}")
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    meta: dict[str, Any] = {}
    if args.policy:
        meta_path = Path(args.policy) / POLICY_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{args.policy} is not a saved LLM policy (no {POLICY_META})")
        meta = json.loads(meta_path.read_text())
    env_id = args.env or meta.get("env_id")
    if not env_id:
        raise UserInputError("--env is required with --model")
    check_env_id(env_id)
    env_config = meta.get("env_config") or {}
    if args.env_config:
        env_config = mapping_arg(args.env_config, "--env-config")
    env = make_env(env_id, env_config)
    options = {"constrained": not args.free}
    if args.policy:
        policy = load_policy(args.policy, env, seed=args.seed, dtype=args.dtype, **options)
        label = args.policy
    else:
        policy = LLMPolicy.from_model_name(args.model, env, seed=args.seed, dtype=args.dtype or "float32", **options)
        label = args.model
    seeds = [args.seed + i for i in range(args.episodes)]
    rows = evaluate(env, policy, seeds, deterministic=not args.stochastic)
    teacher_rows = []
    if args.teacher:
        kwargs, deterministic = teacher_options(meta, args.teacher)
        teacher = make_teacher(args.teacher, env, seed=args.seed, kwargs=kwargs)
        teacher_rows = evaluate(env, teacher, seeds, deterministic=deterministic)
    env.close()
    columns = (
        ("return", "return", "{:.3f}"),
        ("final_accuracy", "final acc", "{:.3f}"),
        ("rounds", "rounds", "{:.0f}"),
        ("rounds_to_target", "rounds→target", "{:.1f}"),
        ("invalid_rate", "invalid", "{:.3f}"),
        ("decision_latency_s", "s/decision", "{:.3f}"),
    )
    title = f"{label} on {env_id} ({len(seeds)} episodes, seeds {seeds[0]}..{seeds[-1]})"
    table = metrics_table(title, columns, first="controller")
    summary = {"llm": {k: nan_mean(rows, k) for k, _, _ in columns}}
    summary["llm"]["invalid_rate_total"] = policy.invalid_rate
    if teacher_rows:
        summary["teacher"] = {k: nan_mean(teacher_rows, k) for k, _, _ in columns}
    for who, values in summary.items():
        table.add_row(who, *(cell(values[k], fmt) for k, _, fmt in columns))
    console().print(table)
    print(f"invalid rate over all decisions: {policy.invalid_rate:.4f}")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"rows": rows, "teacher_rows": teacher_rows, "summary": summary}, indent=2, default=str)
        )
    return 0


def _run_prepare(args: argparse.Namespace) -> int:
    import time

    from qflgym.agents.llm.models import load_model

    start = time.perf_counter()
    load_model(args.model, progress=True)
    print(f"{args.model} ready ({time.perf_counter() - start:.1f} s)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from qflgym.agents.llm.adapters import ADAPTERS
    from qflgym.agents.llm.models import MODELS

    print("models:")
    for name in MODELS.names():
        print(f"  {name:14s} {MODELS.get(name).description}")
    print("adapters:")
    for name in ADAPTERS.names():
        ok, why = ADAPTERS.get(name).available()
        print(f"  {name:14s} {'available' if ok else 'unavailable: ' + why}")
    return 0


#: The ``llm`` command group (plain text: argparse prints it as it is).
COMMAND = Command(
    "llm",
    "LLM policies: distil (sft), RL fine-tune (grpo), evaluate (eval), prepare models",
    configure,
    None,
    "qflgym llm: distil a controller into an LLM policy (sft), fine-tune it in the env loop (grpo), evaluate it "
    "(eval), and prepare or list the packaged models (prepare, models).",
)

if COMMAND.name not in COMMANDS:
    COMMANDS.add(COMMAND.name, COMMAND)

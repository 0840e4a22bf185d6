r"""A trained controller against the tuned baselines and the oracle of ``benchmarks/headroom.py``, paired by seed.

Evaluates ``--controller`` (default ``sb3`` with ``--kwargs '{path: RUN}'``) on the evaluation seeds of a
headroom result and compares it with the reference (the tuned naive baseline) on the same seeds: the mean
objective and its CI, the per-seed saving with its CI, the probability of improvement, and the share of the
oracle's saving it reaches (n/a for a result without an oracle row, e.g. a ``benchmarks/transfer.py`` one, unless
``--oracle`` names one).

    python benchmarks/learned_vs_headroom.py benchmarks/results/headroom/client_selection_v1.json \\
        --env QFL/ClientSelection-v1 --kwargs '{path: runs/results/ppo/cs-v1-equivariant, algo: ppo}' \\
        --json benchmarks/results/headroom/ppo_client_selection_v1.json

A slow controller (an LLM policy) runs in ``--workers`` processes, and ``--reuse`` takes the seeds of earlier
results of the same controller, so a run cut short with ``--skip-seeds`` is completed without repeating it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qflgym.config import parse_yaml
from qflgym.runs import write_result_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("headroom", type=Path, help="a benchmarks/headroom.py --json result")
    parser.add_argument("--env", required=True, help="the preset (an id of the headroom result)")
    parser.add_argument("--controller", default="sb3")
    parser.add_argument("--kwargs", default="{}", help="the controller's kwargs (inline YAML)")
    parser.add_argument("--label", default="ppo (equivariant)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the policy's mode")
    parser.add_argument(
        "--skip-seeds", type=int, nargs="*", default=[], help="evaluation seeds the controller saw in training"
    )
    parser.add_argument(
        "--oracle",
        type=Path,
        help="an oracle result with 'seeds' and 'per_seed' (default: the headroom result's lookahead); its saving "
        "is recomputed on the seeds both share",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, each with its own env and controller (default 1; the same numbers for a deterministic "
        "controller, while --stochastic draws depend on which process ran which seed)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="*",
        default=[],
        help="earlier --json results of this controller (the same --env and --label): their seeds' objectives "
        "are taken, not run again",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    from qflgym.agents.evaluation.paired import paired_comparison

    result = json.loads(args.headroom.read_text())
    preset = result["presets"][args.env]
    controllers = preset["controllers"]
    keep = [i for i, s in enumerate(result["eval_seeds"]) if s not in set(args.skip_seeds)]
    seeds = [result["eval_seeds"][i] for i in keep]
    reference = np.array(controllers[preset["reference"]]["per_seed"])[keep]
    lookahead = [c for c in controllers.values() if c["controller"] == "lookahead"]
    oracle_saving = lookahead[0]["saving_vs_reference"] if lookahead else float("nan")
    if args.oracle is not None:
        other = json.loads(args.oracle.read_text())
        by_seed = dict(zip(other["seeds"], other["per_seed"], strict=True))
        missing = [s for s in seeds if s not in by_seed]
        if missing:
            parser.error(f"--oracle: no result for the evaluation seeds {missing[:5]}...")
        oracle_values = np.array([by_seed[s] for s in seeds])
        oracle_saving = paired_comparison(reference, oracle_values).saving.value
    setup = (args.env, args.controller, parse_yaml(args.kwargs), not args.stochastic)
    done: dict[int, float] = {}
    for path in args.reuse:
        earlier = json.loads(path.read_text())
        if (earlier["env"], earlier["controller"]) != (args.env, args.label):
            parser.error(f"--reuse {path}: a result of {earlier['controller']!r} on {earlier['env']}, not this run's")
        done |= dict(zip(earlier["seeds"], earlier["per_seed"], strict=True))
    todo = [s for s in seeds if s not in done]
    progress = tqdm(total=len(todo), desc=f"{args.label} on {args.env}", unit="episode")
    if todo and args.workers == 1:
        _start(*setup)
        done |= dict(zip(todo, (_objective(s) for s in _ticked(todo, progress)), strict=True))
    elif todo:
        with ProcessPoolExecutor(
            args.workers, mp_context=get_context("spawn"), initializer=_start, initargs=setup
        ) as pool:
            done |= dict(zip(todo, _ticked(pool.map(_objective, todo), progress), strict=True))
    progress.close()
    values = np.array([done[s] for s in seeds])
    cmp = paired_comparison(reference, values)
    share = cmp.saving.value / oracle_saving if oracle_saving > 0 else float("nan")
    out = {
        "env": args.env,
        "controller": args.label,
        "reference": preset["reference"],
        "mean": cmp.mean.value,
        "mean_ci": [cmp.mean.low, cmp.mean.high],
        "saving_vs_reference": cmp.saving.value,
        "ci_low": cmp.saving.low,
        "ci_high": cmp.saving.high,
        "probability_of_improvement": cmp.probability_of_improvement,
        "oracle_saving": oracle_saving,
        "share_of_oracle_saving": share,
        "seeds": seeds,
        "per_seed": values.tolist(),
    }
    print(
        f"{args.label} on {args.env}: objective {cmp.mean.value:.4g} [{cmp.mean.low:.4g}, {cmp.mean.high:.4g}], "
        f"saving vs {preset['reference']} {100 * cmp.saving.value:+.1f}% "
        f"[{100 * cmp.saving.low:+.1f}%, {100 * cmp.saving.high:+.1f}%], P(improve) "
        f"{cmp.probability_of_improvement:.2f}, {_share(share, oracle_saving)}, {cmp.n} seeds"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        write_result_record(args.json, args)
    return 0


_WORKER: dict[str, Any] = {}


def _ticked(items: Iterable[float | int], progress: tqdm) -> Iterator[float | int]:
    """Yield ``items``, ticking ``progress`` once after each."""
    for item in items:
        yield item
        progress.update()


def _start(env_id: str, controller: str, kwargs: dict[str, Any], deterministic: bool) -> None:
    """Build this process's env and controller (once per worker: a model loads once, not once per seed)."""
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.controllers import make_controller

    env = gym.make(env_id)
    _WORKER.update(env=env, controller=make_controller(controller, env, seed=0, **kwargs), deterministic=deterministic)


def _objective(seed: int) -> float:
    """The objective of one evaluation episode with this process's controller."""
    from qflgym.agents.evaluation.episodes import run_episode

    return run_episode(
        _WORKER["env"], _WORKER["controller"], seed=seed, deterministic=_WORKER["deterministic"]
    ).objective


def _share(share: float, oracle_saving: float) -> str:
    """``"87% of the oracle's saving (+73.3%)"``, or n/a without an oracle that saves anything."""
    if np.isnan(share):
        return "share of the oracle's saving n/a (no oracle result, or it saves nothing)"
    return f"{100 * share:.0f}% of the oracle's saving ({100 * oracle_saving:+.1f}%)"


if __name__ == "__main__":
    raise SystemExit(main())

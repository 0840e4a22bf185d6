"""Env steps per second for every registered id, and the overhead of the gym layer over the raw round.

For each id the env (made with ``gym.make``, wrappers included) runs random actions (stopping with probability
0.02 where the controller can stop); every resolved decision
(selection, lr, local steps) is recorded and then replayed on fresh ``Federation`` objects with the same seeds,
calling ``run_round`` directly. Env and raw replays alternate episode by episode, a few times each, and the
fastest repetition of each is kept (the usual ``timeit`` practice on a shared machine):

* ``steps_per_s``: env steps per second (resets excluded; they are reported separately),
* ``raw_round_per_s``: ``Federation.run_round`` calls per second on the same decisions,
* ``overhead_pct``: ``100 x (env time - raw time) / raw time`` over the same rounds,
* ``gym_layer_us``: microseconds per step spent outside ``run_round`` in the env run itself (a paired,
  noise-free view of the same overhead),
* ``reset_ms`` / ``reset_cached_ms``: a reset that builds a new federation / that restores a cached one.

Targets: >= 500 steps/s for ``QFL/ClientSelection-v0`` and an overhead <= 10%.

Usage::

    python benchmarks/env_speed.py                 # every id, ~8 s of stepping per id
    python benchmarks/env_speed.py --quick         # under 60 s in all
    python benchmarks/env_speed.py --json runs/env_speed.json --ids QFL/ClientSelection-v0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits

import qflgym.envs  # noqa: F401  (registers the ids)
from qflgym.envs import ENV_IDS
from qflgym.qfl_core.federation import Federation


def sample_action(env: gym.Env, rng: np.random.Generator, p_stop: float = 0.02) -> Any:
    """A uniformly random action, except that stopping is drawn with probability ``p_stop``."""
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return int(rng.random() < p_stop)
    action = space.sample()
    if isinstance(space, gym.spaces.MultiDiscrete):  # FullControl: the last entry stops
        action[-1] = int(rng.random() < p_stop)
    return action


def record_episodes(env: gym.Env, seconds: float, max_steps: int, seed: int = 0) -> list[dict[str, Any]]:
    """Run random actions for about ``seconds``; return the episodes' seeds and resolved decisions."""
    u = env.unwrapped
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    episodes: list[dict[str, Any]] = []
    _, info = env.reset(seed=seed)
    episode = {"seed": info["federation_seed"], "state": u.get_state(), "actions": [], "decisions": []}
    start, steps = time.perf_counter(), 0
    while steps < max_steps and (time.perf_counter() - start < seconds or steps < 5):
        action = sample_action(env, rng)
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        d = u.last_decision
        episode["actions"].append(action)
        episode["decisions"].append(None if d.stop else (np.asarray(d.selected, dtype=bool), d.lr, d.local_steps))
        if terminated or truncated:
            episodes.append(episode)
            _, info = env.reset()
            episode = {"seed": info["federation_seed"], "state": u.get_state(), "actions": [], "decisions": []}
    if episode["decisions"]:
        episodes.append(episode)
    return episodes


def time_env_episode(env: gym.Env, episode: dict[str, Any]) -> tuple[float, float, int]:
    """Replay one episode's actions through the env: ``(step seconds, seconds inside run_round, steps)``."""
    u = env.unwrapped
    env.reset(options={"federation_seed": episode["seed"]})  # resets the wrappers (TimeLimit, order checks)
    u.set_state(episode["state"])  # the exact start of the recorded episode, np_random included
    fed = u.federation
    original = fed.run_round
    clock = [0.0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = original(*args, **kwargs)
        clock[0] += time.perf_counter() - t
        return out

    actions = episode["actions"]
    fed.run_round = timed
    try:
        t0 = time.perf_counter()
        for action in actions:
            env.step(action)
        total = time.perf_counter() - t0
    finally:
        del fed.run_round
    return total, clock[0], len(actions)


def time_raw_episode(config: Any, episode: dict[str, Any]) -> tuple[float, int]:
    """Replay one episode's decisions on a fresh federation: ``(seconds in run_round, rounds)``."""
    fed = Federation(config, episode["seed"])
    fed.evaluate()
    decisions = [d for d in episode["decisions"] if d is not None]
    t0 = time.perf_counter()
    for selected, lr, steps in decisions:
        fed.run_round(selected, lr, steps)
    return time.perf_counter() - t0, len(decisions)


def time_resets(env: gym.Env, n: int = 3) -> tuple[float, float]:
    """Milliseconds of a reset that builds a new federation, and of one that reuses a cached one."""
    fresh, cached = [], []
    for i in range(n):
        t0 = time.perf_counter()
        env.reset(options={"federation_seed": 10_000 + i})
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.reset(options={"federation_seed": 10_000 + i})
        cached.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(fresh)), 1e3 * float(np.median(cached))


def measure(env_id: str, seconds: float, repeats: int, max_steps: int) -> dict[str, float]:
    """All figures for one id."""
    env = gym.make(env_id)
    config = env.unwrapped.config.federation
    episodes = record_episodes(env, seconds, max_steps)
    # env and raw replays alternate episode by episode; each episode keeps its fastest repetition
    best_env = best_inside = best_raw = 0.0
    steps = rounds = 0
    for episode in episodes:
        e_best = e_inside = r_best = float("inf")
        for _ in range(repeats):
            t_env, t_inside, n_steps = time_env_episode(env, episode)
            t_raw, n_rounds = time_raw_episode(config, episode)
            if t_env < e_best:
                e_best, e_inside = t_env, t_inside
            r_best = min(r_best, t_raw)
        best_env, best_inside, best_raw = best_env + e_best, best_inside + e_inside, best_raw + r_best
        steps, rounds = steps + n_steps, rounds + n_rounds
    reset_ms, reset_cached_ms = time_resets(env)
    return {
        "steps_per_s": steps / best_env,
        "raw_round_per_s": rounds / best_raw if rounds else float("nan"),
        "overhead_pct": 100.0 * (best_env - best_raw) / best_raw if rounds else float("nan"),
        "gym_layer_us": 1e6 * (best_env - best_inside) / steps,
        "reset_ms": reset_ms,
        "reset_cached_ms": reset_cached_ms,
        "steps": steps,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under 60 s in all)")
    parser.add_argument("--ids", nargs="*", default=None, help="env ids (default: every registered id)")
    parser.add_argument("--json", type=Path, default=None, help='write {"envs": {id: figures}} here')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ids = args.ids or list(ENV_IDS)
    seconds, repeats, max_steps = (0.6, 2, 300) if args.quick else (4.0, 3, 3000)
    results: dict[str, dict[str, float]] = {}
    print(
        f"{'env id':34s} {'steps/s':>9s} {'raw rounds/s':>13s} {'overhead':>9s} {'gym us/step':>12s} "
        f"{'reset ms':>9s} {'cached':>7s} {'steps':>6s}"
    )
    start = time.perf_counter()
    with threadpool_limits(1):
        for env_id in ids:
            r = measure(env_id, seconds, repeats, max_steps)
            results[env_id] = r
            print(
                f"{env_id:34s} {r['steps_per_s']:9.1f} {r['raw_round_per_s']:13.1f} {r['overhead_pct']:8.1f}% "
                f"{r['gym_layer_us']:12.1f} {r['reset_ms']:9.1f} {r['reset_cached_ms']:7.1f} {r['steps']:6d}",
                flush=True,
            )
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"envs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

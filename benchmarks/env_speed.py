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

With ``--vector B [B ...]`` it measures batched federations instead: ``gym.make_vec(id, num_envs=B,
vectorization_mode="vector_entry_point")`` with random actions and autoresets (new federations included),
in ``--processes P`` worker processes at once (one per core), each pinned to one torch thread; reported are
env steps/s in all, per process (core), and each process's peak RSS.

Usage::

    python benchmarks/env_speed.py                 # every id, ~8 s of stepping per id
    python benchmarks/env_speed.py --quick         # under 60 s in all
    python benchmarks/env_speed.py --json runs/env_speed.json --ids QFL/ClientSelection-v0
    python benchmarks/env_speed.py --vector 1 8 32 128 --processes 2 --ids QFL/ClientSelection-v0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_peers import peak_rss_gib

import qflgym.envs  # noqa: F401  (registers the ids)
from qflgym.envs import ENV_IDS, TEXT_ENV_IDS
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


def vector_worker(env_id: str, num_envs: int, seconds: float, seed: int) -> dict[str, float]:
    """Random actions through the vector env for about ``seconds`` (after a warm-up step); one process."""
    torch.set_num_threads(1)
    with threadpool_limits(1):
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
        env.action_space.seed(seed)
        env.reset(seed=seed)
        env.step(env.action_space.sample())
        steps, resets, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds or steps < 2 * num_envs:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += num_envs
            resets += int(np.count_nonzero(terminated | truncated))
        elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "steps": steps, "episodes_ended": resets, "peak_rss_gib": peak_rss_gib()}


def measure_vector(env_id: str, num_envs: int, processes: int, seconds: float) -> dict[str, float]:
    """Run :func:`vector_worker` in ``processes`` processes at once; sum their speeds."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        runs = list(
            pool.map(
                vector_worker,
                [env_id] * processes,
                [num_envs] * processes,
                [seconds] * processes,
                [1000 * p for p in range(processes)],
            )
        )
    total = sum(r["steps_per_s"] for r in runs)
    return {
        "num_envs": num_envs,
        "processes": processes,
        "steps_per_s": total,
        "steps_per_s_per_process": total / processes,
        "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "steps": sum(r["steps"] for r in runs),
        "episodes_ended": sum(r["episodes_ended"] for r in runs),
    }


def main_vector(ids: list[str], sizes: list[int], processes: int, seconds: float, out: Path | None) -> int:
    """The ``--vector`` table."""
    print(
        f"{'env id':28s} {'B':>4s} {'procs':>5s} {'steps/s':>9s} {'per proc':>9s} {'peak RSS GiB':>12s} "
        f"{'episodes':>8s}"
    )
    results: dict[str, list[dict[str, float]]] = {}
    for env_id in ids:
        for b in sizes:
            r = measure_vector(env_id, b, processes, seconds)
            results.setdefault(env_id, []).append(r)
            print(
                f"{env_id:28s} {b:4d} {processes:5d} {r['steps_per_s']:9.0f} {r['steps_per_s_per_process']:9.0f} "
                f"{r['peak_rss_gib']:12.2f} {r['episodes_ended']:8d}",
                flush=True,
            )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"vector": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under 60 s in all)")
    parser.add_argument(
        "--ids", nargs="*", default=None, help="env ids (default: every registered id but the text ones, see docs)"
    )
    parser.add_argument("--json", type=Path, default=None, help='write {"envs": {id: figures}} here')
    parser.add_argument("--vector", type=int, nargs="*", default=None, help="batched envs of these sizes B")
    parser.add_argument("--processes", type=int, default=1, help="--vector: worker processes at once (one per core)")
    parser.add_argument("--seconds", type=float, default=10.0, help="--vector: seconds of stepping per size")
    args = parser.parse_args(argv)
    if args.vector:
        seconds = 3.0 if args.quick else args.seconds
        return main_vector(args.ids or ["QFL/ClientSelection-v0"], args.vector, args.processes, seconds, args.json)
    torch.set_num_threads(1)
    ids = args.ids or [i for i in ENV_IDS if i not in TEXT_ENV_IDS]
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

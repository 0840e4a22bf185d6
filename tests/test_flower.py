import math

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import MessageType

from qflgym.agents.cli.main import main
from qflgym.agents.controllers import make_controller
from qflgym.agents.evaluation import run_episode
from qflgym.agents.integrations.flower.client import make_client_app
from qflgym.agents.integrations.flower.protocol import read_properties
from qflgym.agents.integrations.flower.simulation import LocalGrid, federation_seed, run_flower
from qflgym.agents.runtime import make_env
from qflgym.envs.actions import ControlDecision

#: The tiny preset without randomness in local training (exact expectations, every shard within one batch,
#: always online): Flower's per-client training then equals Federation.run_round's batched training.
EXACT = {
    "federation": {
        "clients": {"shots": None, "depolarizing": 0.0, "readout_error": 0.0, "availability": 1.0},
        "training": {"batch_size": 64},
    }
}
SELECTION = "QFL/ClientSelection-Tiny-v0"
SEED = 1000


class Scripted:
    """A controller that emits ``decide(step, obs)`` through the env's codec and records what it saw."""

    def __init__(self, env, decide):
        self.codec = env.unwrapped.action_codec
        self.decide = decide
        self.observations = []
        self.decisions = []

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        self.observations.append(np.array(obs))
        decision = self.decide(len(self.observations), obs)
        self.decisions.append(self.codec.decode(self.codec.encode(decision)))
        return self.codec.encode(decision), state


def _train_messages(grid):
    return [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]


def _local(env_id, decide, env_config=EXACT, grid=None):
    holder = {}

    def factory(env):
        holder["controller"] = Scripted(env, decide)
        return holder["controller"]

    strategy = run_flower(env_id, factory, env_config=env_config, seed=SEED, backend="local", grid=grid)
    return strategy, holder["controller"]


def _grid(env_id=SELECTION, env_config=EXACT):
    env = make_env(env_id, env_config)
    config = env.unwrapped.config
    return LocalGrid(make_client_app(config.federation), config.n_clients)


def test_strategy_delegates_selection_to_the_controller():
    cohorts = [(0, 1), (2, 3), (1, 3), (0,), (0, 1, 2, 3)]
    grid = _grid()

    def decide(step, obs):
        return ControlDecision.select(cohorts[(step - 1) % len(cohorts)], 4)

    strategy, controller = _local(SELECTION, decide, grid=grid)
    expected = [d.selected_ids for d in controller.decisions]
    assert strategy.selections == expected
    sent = _train_messages(grid)
    node_to_client = {node: i for i, node in enumerate(grid.node_ids)}
    rounds = {}
    for message in sent:
        rounds.setdefault(message.content["config"]["server-round"], []).append(
            node_to_client[message.metadata.dst_node_id]
        )
    assert [tuple(sorted(rounds[r])) for r in sorted(rounds)] == expected


def test_stop_decision_ends_the_run():
    grid = _grid("QFL/RoundTermination-Tiny-v0")

    def decide(step, obs):
        return ControlDecision(stop=step == 3)

    strategy, controller = _local("QFL/RoundTermination-Tiny-v0", decide, grid=grid)
    assert len(controller.decisions) == 3
    assert strategy.episode.rounds == 2 and strategy.episode.terminated and strategy.done
    assert {m.content["config"]["server-round"] for m in _train_messages(grid)} == {1, 2}


def test_train_config_carries_the_controllers_lr_and_local_steps():
    grid = _grid("QFL/FullControl-Tiny-v0")
    choices = [(0.5, 1), (2.0, 3), (1.0, 2)]

    def decide(step, obs):
        multiplier, steps = choices[(step - 1) % len(choices)]
        return ControlDecision.select([0, 2], 4, lr=0.2 * multiplier, local_steps=steps)

    strategy, controller = _local("QFL/FullControl-Tiny-v0", decide, grid=grid)
    by_round = {m.content["config"]["server-round"]: m.content["config"] for m in _train_messages(grid)}
    assert len(by_round) == strategy.episode.rounds
    for rnd, config in by_round.items():
        decision = controller.decisions[rnd - 1]
        assert config["lr"] == pytest.approx(decision.lr) and config["local-steps"] == decision.local_steps
    assert {c["local-steps"] for c in by_round.values()} == {1, 2, 3}


def test_a_client_leaving_the_pool_is_masked_and_dropped():
    grid = _grid()
    leaving = grid.node_ids[2]

    def decide(step, obs):
        if step == 2:
            grid.disconnect(leaving)
        return ControlDecision.select([0, 1, 2, 3], 4)

    strategy, controller = _local(SELECTION, decide, grid=grid)
    layout = strategy.env.layout
    available = [layout.client(obs, "available") for obs in controller.observations]
    assert available[0].tolist() == [1, 1, 1, 1] and available[1].tolist() == [1, 1, 1, 1]
    assert all(a.tolist() == [1, 1, 0, 1] for a in available[2:])
    assert layout.global_(controller.observations[2], "available_fraction") == pytest.approx(0.75)
    assert all(m.metadata.dst_node_id != leaving for m in _train_messages(grid)[8:])
    assert strategy.episode.trace[3]["dropped"] == 1.0 and strategy.episode.trace[3]["participants"] == 3.0


def test_flower_run_reproduces_the_env_episode_of_a_heuristic():
    env = make_env(SELECTION, EXACT)
    reference_controller = make_controller("power-of-choice", env, seed=SEED)
    env_selections = []
    env_observations = []

    class Recording:
        def predict(self, obs, **kwargs):
            env_observations.append(np.array(obs))
            return reference_controller.predict(obs, **kwargs)

    unwrapped = env.unwrapped
    original_step = unwrapped.step

    def step(action):
        result = original_step(action)
        env_selections.append(unwrapped.last_report.selected)
        return result

    unwrapped.step = step
    reference = run_episode(env, Recording(), seed=SEED)
    seen = []

    def factory(mirror):
        controller = make_controller("power-of-choice", mirror, seed=SEED)

        class Seen:
            def predict(self, obs, **kwargs):
                seen.append(np.array(obs))
                return controller.predict(obs, **kwargs)

        return Seen()

    strategy = run_flower(SELECTION, factory, env_config=EXACT, seed=SEED, backend="local")
    assert strategy.selections == env_selections
    assert len(seen) == len(env_observations)
    np.testing.assert_allclose(np.array(seen), np.array(env_observations), atol=1e-6)
    ours, theirs = strategy.episode.trace, reference.trace
    assert len(ours) == len(theirs) == reference.rounds + 1
    for key in ("accuracy", "val_accuracy", "bytes_uploaded", "wall_time_s", "reward"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in theirs], atol=1e-9, err_msg=key)


def test_a_noisy_federation_runs_with_its_own_client_randomness():
    strategy = run_flower(SELECTION, lambda env: make_controller("random-k", env, seed=1), seed=SEED, backend="local")
    trace = strategy.episode.trace
    assert strategy.episode.rounds >= 1 and all(math.isfinite(r["val_accuracy"]) for r in trace)
    assert trace[-1]["shots"] > 0


def test_federation_seed_matches_the_envs_draw():
    env = make_env(SELECTION, EXACT)
    _, info = env.reset(seed=SEED)
    assert federation_seed(env.unwrapped.config, SEED) == info["federation_seed"]


def test_client_properties_name_what_is_missing():
    with pytest.raises(ValueError, match="latency-s"):
        read_properties(
            {
                "client-id": 0,
                "num-examples": 2,
                "label-histogram": [1, 1],
                "shots": 0,
                "depolarizing": 0.0,
                "readout-error": 0.0,
            }
        )
    with pytest.raises(ValueError, match="sums to"):
        read_properties(
            {
                "client-id": 0,
                "num-examples": 3,
                "label-histogram": [1, 1],
                "shots": 0,
                "depolarizing": 0.0,
                "readout-error": 0.0,
                "latency-s": 0.01,
            }
        )


def test_flower_run_command_writes_bench_results(tmp_path):
    out = tmp_path / "run"
    status = main(
        [
            "flower",
            "run",
            "--controller",
            "round-robin",
            "--env",
            SELECTION,
            "--backend",
            "local",
            "--env-config",
            "{round_budget: 3}",
            "--compare-env",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    import pandas as pd

    rows = pd.read_csv(out / "results.csv")
    assert list(rows["controller"]) == ["round-robin (flower)", "round-robin (env)"]
    assert (out / "results.md").read_text().count("round-robin") >= 2
    assert list((out / "plots").glob("*.png"))


@pytest.mark.slow
def test_flower_ray_simulation_reproduces_the_env_episode():
    config = {**EXACT, "round_budget": 2}
    env = make_env(SELECTION, config)
    reference = run_episode(env, make_controller("round-robin", env, seed=SEED), seed=SEED)
    strategy = run_flower(
        SELECTION, lambda e: make_controller("round-robin", e, seed=SEED), env_config=config, seed=SEED, num_cpus=2
    )
    assert [r["val_accuracy"] for r in strategy.episode.trace] == [r["val_accuracy"] for r in reference.trace]

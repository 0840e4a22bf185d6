"""The QFL Gymnasium suite: registration, env checkers, determinism, spaces, codecs, config errors, rendering."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import qflgym.envs as qenvs
from qflgym.config import ConfigError
from qflgym.envs import ENV_IDS as ALL_ENV_IDS
from qflgym.envs import TEXT_ENV_IDS, ControlDecision
from qflgym.envs.actions import (
    FullControlCodec,
    LearningRateMap,
    SelectionCodec,
    StepSizeCodec,
    TerminationCodec,
    TopKSelectionCodec,
)
from qflgym.envs.observation import CLIENT_FEATURES, GLOBAL_FEATURES, MAX_LABEL_CLASSES

#: The text ids need the corpus and its embeddings: tests/test_text_envs.py checks them on fixture data.
ENV_IDS = [i for i in ALL_ENV_IDS if i not in TEXT_ENV_IDS]
TINY_IDS = [i for i in ENV_IDS if "-Tiny-" in i]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _rollout(env: gym.Env, seed: int, n_steps: int) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [(np.asarray(obs).copy(), info["federation_seed"])]
    for _ in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((np.asarray(obs).copy(), reward, terminated, truncated, info["shots"], info["rewards"]))
        if terminated or truncated:
            obs, info = env.reset()
            out.append((np.asarray(obs).copy(), info["federation_seed"]))
    return out


# ---------------------------------------------------------------------------------------------- registration
def test_importing_registers_every_id_with_a_string_entry_point_and_its_presets():
    assert len(ENV_IDS) == 25  # 4 families x (default, Hard, Tiny) x (v0, v1), and ClientSelection-Large-v1
    assert TEXT_ENV_IDS == ("QFL/ClientSelection-Text-v1", "QFL/ClientSelection-TextAdapter-v1")
    modules = {"ClientSelection": "client_selection", "StepSize": "step_size"}
    modules |= {"RoundTermination": "round_termination", "FullControl": "full_control"}
    for base, module in modules.items():
        for variant, presets in (("", ()), ("-Hard", ("hard",)), ("-Tiny", ("tiny",))):
            spec = gym.spec(f"QFL/{base}{variant}-v0")
            assert spec.entry_point == f"qflgym.envs.{module}:{base}Env"
            assert spec.kwargs == {"presets": presets}
            assert spec.max_episode_steps is None  # the env truncates at its config's budget
            v1 = gym.spec(f"QFL/{base}{variant}-v1")
            assert v1.entry_point == spec.entry_point
            assert v1.kwargs["presets"][:2] == ("v1", f"{module}_v1")
    qenvs.register_envs()  # idempotent


@pytest.mark.parametrize("env_id", ["QFL/ClientSelection-Tiny-v0", "QFL/FullControl-Hard-v0"])
def test_the_configs_round_budget_is_the_episode_length_and_the_specs_max_episode_steps(env_id):
    default = gym.make(env_id)
    budget = default.unwrapped.config.round_budget
    assert default.spec.max_episode_steps == default.unwrapped.spec.max_episode_steps == budget
    env = gym.make(env_id, config={"round_budget": budget + 4, "target_accuracy": None})
    assert env.spec.max_episode_steps == budget + 4
    assert gym.make(env.spec).spec.max_episode_steps == budget + 4  # re-made from its spec, same horizon
    env.reset(seed=0)
    keep_going = env.unwrapped.action_codec.encode(ControlDecision(selected=np.ones(env.unwrapped.n_clients, bool)))
    for step in range(1, budget + 5):
        _, _, terminated, truncated, _ = env.step(keep_going)
        assert not terminated and truncated == (step == budget + 4)
    limited = gym.make(env_id, max_episode_steps=2, config={"target_accuracy": None})
    assert limited.spec.max_episode_steps == 2
    limited.reset(seed=0)
    assert [limited.step(keep_going)[3] for _ in range(2)] == [False, True]


def test_make_with_module_prefix_and_config_override():
    env = gym.make("qflgym.envs:QFL/ClientSelection-Tiny-v0", config={"round_budget": 3})
    assert env.unwrapped.config.round_budget == 3
    assert isinstance(env.unwrapped, qenvs.ClientSelectionEnv)
    assert env.unwrapped.presets == ("tiny",)
    assert env.unwrapped.config.n_clients == 4


@pytest.mark.parametrize("presets", ["tiny", ("tiny", 3)])
def test_presets_must_be_a_sequence_of_names(presets):
    with pytest.raises(ConfigError, match="presets"):
        qenvs.ClientSelectionEnv(presets=presets)
    with pytest.raises(ConfigError, match="allowed: client_selection"):
        qenvs.ClientSelectionEnv(presets=("nope",))


# --------------------------------------------------------------------------------------------- env checkers
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_and_sb3_check_env(env_id):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env, wrapped = gym.make(env_id), gym.make(env_id)  # (making a v0 id warns that v1 exists)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
        sb3_check_env(wrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_envs_seeded_alike_roll_out_identically(env_id):
    n_steps = 12 if env_id in TINY_IDS else 2
    a = _rollout(gym.make(env_id), 7, n_steps)
    b = _rollout(gym.make(env_id), 7, n_steps)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    c = _rollout(gym.make(env_id), 8, 1)
    assert c[0][1] != a[0][1]  # another seed, another federation


def test_tiny_rollouts_spend_shots():
    env = gym.make("QFL/ClientSelection-Tiny-v0")
    env.reset(seed=0)
    shots = 0
    for _ in range(6):
        _, _, term, trunc, info = env.step(np.ones(env.unwrapped.n_clients, dtype=np.int8))
        shots += info["shots"]
        if term or trunc:
            env.reset()
    assert shots > 0


# ---------------------------------------------------------------------------------------------------- spaces
def test_observation_layout_names_every_feature():
    env = gym.make("QFL/ClientSelection-Tiny-v0")
    obs, _ = env.reset(seed=1)
    layout = env.unwrapped.layout
    n = env.unwrapped.n_clients
    assert obs.shape == (n * len(CLIENT_FEATURES) + len(GLOBAL_FEATURES),)
    assert obs.dtype == np.float32
    sizes = np.array([s.size for s in env.unwrapped.federation.client_stats])
    np.testing.assert_allclose(layout.client(obs, "data_size"), sizes / sizes.max(), rtol=1e-6)
    assert layout.global_(obs, "round_fraction") == 0.0
    assert np.all(layout.client(obs, "available") == 1.0)
    batch = np.stack([obs, obs])
    assert layout.client(batch, "latency").shape == (2, n)
    with pytest.raises(KeyError, match="allowed"):
        layout.client(obs, "nope")
    obs, *_ = env.step(np.ones(n, dtype=np.int8))
    assert layout.global_(obs, "round_fraction") == pytest.approx(1 / env.unwrapped.config.round_budget)
    assert np.all(layout.client(obs, "times_selected") > 0)


def test_label_fraction_features_are_each_clients_label_distribution():
    env = gym.make("QFL/ClientSelection-v0")  # 4 classes, 10 clients, Dirichlet label skew
    obs, _ = env.reset(seed=3)
    layout, fed = env.unwrapped.layout, env.unwrapped.federation
    fractions = np.stack([layout.client(obs, f"label_frac_{c}") for c in range(MAX_LABEL_CLASSES)], axis=-1)
    hist = np.array([s.label_histogram for s in fed.client_stats], dtype=np.float64)
    np.testing.assert_allclose(fractions[:, : fed.n_classes], hist / hist.sum(1, keepdims=True), rtol=1e-6)
    assert np.all(fractions[:, fed.n_classes :] == 0.0)
    np.testing.assert_allclose(fractions.sum(1), 1.0, rtol=1e-6)
    assert not np.allclose(fractions, fractions[0])  # non-IID: clients differ
    # Static per federation: unchanged by a round, changed by a new federation.
    obs2, *_ = env.step(np.ones(env.unwrapped.n_clients, dtype=np.int8))
    np.testing.assert_array_equal(layout.client(obs2, "label_frac_0"), layout.client(obs, "label_frac_0"))
    obs3, _ = env.reset(seed=4)
    assert not np.array_equal(layout.client(obs3, "label_frac_0"), layout.client(obs, "label_frac_0"))


def test_dict_observation_holds_the_same_numbers():
    flat = gym.make("QFL/StepSize-Tiny-v0")
    dct = gym.make("QFL/StepSize-Tiny-v0", config={"observation": "dict"})
    assert isinstance(dct.observation_space, gym.spaces.Dict)
    o1, _ = flat.reset(seed=3)
    o2, _ = dct.reset(seed=3)
    layout = flat.unwrapped.layout
    np.testing.assert_array_equal(layout.to_flat(o2), o1)
    np.testing.assert_array_equal(layout.to_dict(o1)["clients"], o2["clients"])
    a = np.array([0.3, -0.2], dtype=np.float32)
    o1, *_ = flat.step(a)
    o2, *_ = dct.step(a)
    np.testing.assert_array_equal(layout.to_flat(o2), o1)
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the [N, F] client block is meant for set/attention encoders; SB3 flattens it and says so
        warnings.filterwarnings("ignore", message=".*unconventional shape", category=UserWarning)
        sb3_check_env(dct)


# ---------------------------------------------------------------------------------------------------- codecs
def test_discrete_codecs_round_trip_every_valid_action():
    rng = np.random.default_rng(0)
    lr_map = LearningRateMap(0.2, 0.1, 10.0)
    for codec in (
        SelectionCodec(5, 0.2, 1),
        TerminationCodec(5, 0.2, 1),
        FullControlCodec(5, lr_map, 7, (1, 4)),
    ):
        codec.space.seed(1)
        for _ in range(50):
            a = codec.space.sample()
            np.testing.assert_array_equal(codec.encode(codec.decode(a)), a)
    full = FullControlCodec(5, lr_map, 7, (1, 4))
    assert full.lr_grid[3] == pytest.approx(0.2)  # middle bin = the base lr
    d = ControlDecision(rng.random(5) < 0.5, float(full.lr_grid[5]), 3, False)
    assert full.decode(full.encode(d)) == d


def test_box_codecs_round_trip_representable_decisions():
    lr_map = LearningRateMap(0.2, 0.1, 10.0)
    step = StepSizeCodec(4, lr_map, (1, 5))
    for lr, steps in ((0.2, 1), (0.02, 5), (2.0, 3), (0.5, 2)):
        d = step.decode(step.encode(ControlDecision(None, lr, steps)))
        assert d.lr == pytest.approx(lr, rel=1e-6) and d.local_steps == steps and d.selected is None
    assert step.decode(np.zeros(2, dtype=np.float32)).lr == pytest.approx(0.2)
    assert step.decode(step.encode(ControlDecision(None, 1e-6, 99))).local_steps == 5  # clipped
    topk = TopKSelectionCodec(6, 2, 0.2, 1)
    mask = np.array([0, 1, 0, 0, 1, 0], dtype=bool)
    assert topk.decode(topk.encode(ControlDecision(mask))) == ControlDecision(mask, 0.2, 1)
    scores = np.array([0.9, 0.1, 0.95, -0.5, 0.3, 0.0], dtype=np.float32)
    assert topk.decode(scores).selected_ids == (0, 2)
    assert topk.decode(-np.ones(6, dtype=np.float32)).selected_ids == ()
    with pytest.raises(ValueError, match="budget"):
        topk.encode(ControlDecision(np.ones(6, dtype=bool)))


@pytest.mark.parametrize(
    ("env_id", "bad"),
    [
        ("QFL/ClientSelection-Tiny-v0", np.array([0, 1, 2, 0])),
        ("QFL/ClientSelection-Tiny-v0", np.array([0, 1, 0])),
        ("QFL/ClientSelection-Tiny-v0", np.array([0.5, 1, 0, 0])),
        ("QFL/ClientSelection-Tiny-v0", "1010"),
        ("QFL/StepSize-Tiny-v0", np.array([1.5, 0.0])),
        ("QFL/StepSize-Tiny-v0", np.array([np.nan, 0.0])),
        ("QFL/StepSize-Tiny-v0", np.array([0.0])),
        ("QFL/RoundTermination-Tiny-v0", 2),
        ("QFL/RoundTermination-Tiny-v0", -1),
        ("QFL/RoundTermination-Tiny-v0", 0.5),
        ("QFL/RoundTermination-Tiny-v0", [0, 1]),
        ("QFL/FullControl-Tiny-v0", np.array([0, 1, 0, 1, 7, 0, 0])),
        ("QFL/FullControl-Tiny-v0", np.array([0, 1, 0, 1, 0, 0])),
        ("QFL/FullControl-Tiny-v0", np.array([0, 1, 0, 1, 0, 0, -1])),
    ],
)
def test_invalid_actions_raise_value_error_naming_the_space(env_id, bad):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in the action space") as err:
        env.step(bad)
    assert str(env.action_space) in str(err.value)


def test_selecting_no_client_is_a_valid_round():
    env = gym.make("QFL/ClientSelection-Tiny-v0")
    _, info0 = env.reset(seed=2)
    _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.int8))
    fed = env.unwrapped.federation
    assert info["round"] == 1 and fed.round == 1
    assert info["participants"] == 0 and info["bytes"] == 0 and info["shots"] == 0
    assert info["wall_time_s"] == pytest.approx(fed.config.server_time_s)
    assert info["val_accuracy"] == info0["val_accuracy"]
    assert not (terminated or truncated)


def test_wrapper_accepts_decisions():
    env = qenvs.DecisionActions(gym.make("QFL/FullControl-Tiny-v0"))
    env.reset(seed=0)
    decision = ControlDecision.select([0, 2], 4, lr=env.unwrapped.lr_map.base_lr, local_steps=2)
    _, _, _, _, info = env.step(decision)
    assert info["selected"] == 2 and info["local_steps"] == 2
    assert env.unwrapped.last_decision.selected_ids == (0, 2)


# ------------------------------------------------------------------------------------------- masks & MaskablePPO
def test_action_masks_mark_unavailable_clients():
    env = gym.make("QFL/FullControl-Tiny-v0")
    env.reset(seed=0)
    unwrapped = env.unwrapped
    mask = unwrapped.action_masks()
    assert mask.shape == (int(env.action_space.nvec.sum()),)
    np.testing.assert_array_equal(mask[:8].reshape(4, 2)[:, 1], unwrapped.federation.available)
    unwrapped.client_state.available[:] = [True, False, True, False]
    mask = unwrapped.action_masks()
    np.testing.assert_array_equal(mask[:8].reshape(4, 2)[:, 1], [True, False, True, False])
    assert mask[:8].reshape(4, 2)[:, 0].all() and mask[8:].all()
    sel = gym.make("QFL/ClientSelection-Tiny-v0").unwrapped
    sel.reset(seed=0)
    sel.client_state.available[:] = [False, True, True, True]
    assert sel.action_masks().tolist() == [True, False] + [True, True] * 3


def test_availability_drawn_by_the_federation_reaches_observation_masks_and_dropouts():
    env = gym.make("QFL/ClientSelection-Tiny-v0", config={"federation": {"clients": {"availability": 0.5}}})
    obs, _ = env.reset(seed=0)
    layout, fed = env.unwrapped.layout, env.unwrapped.federation
    seen_offline = 0
    for _ in range(6):
        online = fed.available.copy()
        seen_offline += int((~online).sum())
        assert layout.client(obs, "available").tolist() == online.astype(float).tolist()
        assert layout.global_(obs, "available_fraction") == pytest.approx(online.mean())
        assert env.unwrapped.action_masks().reshape(4, 2)[:, 1].tolist() == online.tolist()
        obs, _, terminated, truncated, info = env.step(np.ones(4, dtype=np.int8))
        assert info["dropped"] == int((~online).sum())
        if terminated or truncated:
            break
    assert seen_offline > 0


def test_maskable_ppo_trains_on_the_selection_env():
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks

    env = gym.make("QFL/ClientSelection-Tiny-v0")
    model = MaskablePPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, policy_kwargs={"net_arch": [16]}
    )
    model.learn(total_timesteps=16)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=get_action_masks(env))
    assert env.action_space.contains(action)


# ------------------------------------------------------------------------------------------------ episodes
def test_env_truncates_at_the_round_budget_without_time_limit():
    env = qenvs.ClientSelectionEnv(config={"round_budget": 3, "target_accuracy": None}, presets=("tiny",))
    env.reset(seed=0)
    flags = [env.step(np.ones(4, dtype=np.int8))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones(4, dtype=np.int8))


def test_target_accuracy_terminates_with_a_bonus():
    env = gym.make("QFL/ClientSelection-Tiny-v0", config={"target_accuracy": 0.01})
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(np.ones(4, dtype=np.int8))
    assert terminated and not truncated and info["target_reached"]
    assert info["rewards"]["target_bonus"] == 1.0


def test_stop_action_ends_the_episode_without_a_round():
    env = gym.make("QFL/RoundTermination-Tiny-v0", config={"reward_weights": {"stop_accuracy": 1.0}})
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(0)
    assert not terminated and info["round"] == 1
    _, reward, terminated, truncated, info = env.step(1)
    assert terminated and not truncated and info["stopped"]
    assert info["round"] == 1 and env.unwrapped.federation.round == 1
    assert info["rewards"]["stop_accuracy"] == pytest.approx(info["val_accuracy"])
    assert reward == pytest.approx(info["val_accuracy"])


def test_each_episode_draws_a_new_federation_unless_the_seed_is_fixed():
    env = gym.make("QFL/ClientSelection-Tiny-v0")
    _, i1 = env.reset(seed=0)
    _, i2 = env.reset()
    assert i1["federation_seed"] != i2["federation_seed"]
    fixed = gym.make("QFL/ClientSelection-Tiny-v0", config={"federation_seed": 11})
    o1, i1 = fixed.reset(seed=0)
    o2, i2 = fixed.reset(seed=1)
    assert i1["federation_seed"] == i2["federation_seed"] == 11
    np.testing.assert_array_equal(o1, o2)
    _, i3 = env.reset(options={"federation_seed": 11})
    assert i3["federation_seed"] == 11


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"observation": "image"}, ["observation", "flat", "dict"]),
        ({"round_budgett": 3}, ["round_budgett", "unknown field", "round_budget"]),
        ({"selection_rule": "best"}, ["selection_rule", "random-k", "loss-greedy"]),
        ({"reward_weights": {"speed": 1.0}}, ["reward_weights", "speed", "accuracy_gain"]),
        ({"clients_per_round": 99}, ["clients_per_round", "n_clients=4"]),
        ({"federation": {"clients": {"n_client": 3}}}, ["federation.clients.n_client", "n_clients"]),
        ({"federation": {"partition": {"scheme": "zipf"}}}, ["federation.partition.scheme", "dirichlet"]),
        ({"federation_preset": "nope"}, ["federation_preset", "default"]),
        ({"lr_multiplier_range": [2.0, 1.0]}, ["lr_multiplier_range", "low <= high"]),
    ],
)
def test_bad_config_names_the_field_and_the_allowed_values(config, expected):
    with pytest.raises(ConfigError) as err:
        gym.make("QFL/ClientSelection-Tiny-v0", config=config)
    for text in expected:
        assert text in str(err.value)


# ---------------------------------------------------------------------------------------------------- render
def test_render_ansi_table_and_rgb_array():
    env = gym.make("QFL/ClientSelection-Tiny-v0", render_mode="ansi")
    env.reset(seed=0)
    env.step(np.ones(4, dtype=np.int8))
    text = env.render()
    assert "val_acc" in text and len(text.strip().splitlines()) == 4
    env = gym.make("QFL/ClientSelection-Tiny-v0", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.ones(4, dtype=np.int8))
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3

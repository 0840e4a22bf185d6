"""The per-client equivariant policy: equivariance, other federation sizes, training, save/load, bad kwargs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.utils import ConstantSchedule

import qflgym.envs
from qflgym.agents.controllers import make_controller
from qflgym.agents.evaluation import evaluate
from qflgym.agents.policies import (
    POOLINGS,
    EquivariantActorCriticPolicy,
    MaskableEquivariantActorCriticPolicy,
    adapt_model,
    adapt_policy,
    load_for_env,
    resolve_policy,
)
from qflgym.agents.policies.selection_mode import top_expected_count
from qflgym.agents.training.hyperparams import default_hyperparams_path, resolve
from qflgym.agents.training.sb3 import train
from qflgym.config import ConfigError
from qflgym.envs.observation import ObservationLayout

N = 5
LAYOUT = ObservationLayout(N)
#: Action spaces of the suite with N clients: (action space, per-client parameters per client, pooled parameters).
ACTIONS = {
    "selection": (spaces.MultiBinary(N), 1, 0),
    "top_k": (spaces.Box(-1.0, 1.0, (N,), dtype=np.float32), 1, 0),
    "step_size": (spaces.Box(-1.0, 1.0, (2,), dtype=np.float32), 0, 2),
    "termination": (spaces.Discrete(2), 0, 2),
    "full_control": (spaces.MultiDiscrete([2] * N + [7, 3, 2]), 2, 12),
}
TINY = "QFL/ClientSelection-Tiny-v0"
SMALL = {"embed_dim": 16}
PPO_TINY = {"n_steps": 32, "batch_size": 16, "n_epochs": 1, "seed": 0}


def _policy(action_space, cls=EquivariantActorCriticPolicy, obs_space=None, **kwargs):
    torch.manual_seed(0)
    return cls(obs_space or LAYOUT.dict_space(), action_space, ConstantSchedule(1e-3), **{**SMALL, **kwargs})


def _obs_batch(seed=0, batch=3):
    space = LAYOUT.dict_space()
    space.seed(seed)
    samples = [space.sample() for _ in range(batch)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in ("clients", "global")}


def _outputs(policy, obs):
    """(action-head output, value) of ``policy`` for a preprocessed observation batch."""
    with torch.no_grad():
        latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(obs))
        return policy.action_net(latent_pi), policy.value_net(latent_vf)


@pytest.mark.parametrize("pooling", POOLINGS.names())
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_permuting_clients_permutes_per_client_outputs_and_keeps_value_and_pooled_outputs(pooling, action):
    action_space, per_client, pooled = ACTIONS[action]
    policy = _policy(action_space, pooling=pooling)
    assert (policy.action_layout.per_client, policy.action_layout.pooled) == (per_client, pooled)
    obs = _obs_batch()
    perm = torch.as_tensor(np.random.default_rng(1).permutation(N))
    permuted = {"clients": obs["clients"][:, perm], "global": obs["global"]}
    out, value = _outputs(policy, obs)
    out_p, value_p = _outputs(policy, permuted)
    torch.testing.assert_close(value_p, value)
    cut = N * per_client
    torch.testing.assert_close(out_p[:, cut:], out[:, cut:])
    if per_client:
        client_out = out[:, :cut].reshape(-1, N, per_client)
        torch.testing.assert_close(out_p[:, :cut].reshape(-1, N, per_client), client_out[:, perm])
        assert not torch.allclose(client_out[:, 0], client_out[:, 1])  # the clients are told apart


def test_masked_per_client_logits_follow_the_permutation_and_masks_apply():
    policy = _policy(spaces.MultiBinary(N), cls=MaskableEquivariantActorCriticPolicy, pooling="attention")
    assert policy.action_layout.per_client == 2  # [can be 0, can be 1] per client, like the env's mask
    obs = _obs_batch(batch=1)
    perm = torch.as_tensor([4, 2, 0, 1, 3])
    out, _ = _outputs(policy, obs)
    out_p, _ = _outputs(policy, {"clients": obs["clients"][:, perm], "global": obs["global"]})
    torch.testing.assert_close(out_p.reshape(N, 2), out.reshape(N, 2)[perm])
    mask = np.ones((N, 2), dtype=bool)
    mask[[1, 3], 1] = False  # clients 1 and 3 unavailable
    for _ in range(5):
        actions, _, _ = policy(obs, action_masks=mask.reshape(1, -1))
        assert actions[0, 1] == 0 and actions[0, 3] == 0


def test_flat_and_dict_observations_give_the_same_outputs_with_the_same_weights():
    action_space = ACTIONS["full_control"][0]
    dict_policy = _policy(action_space)
    flat_policy = _policy(action_space, obs_space=LAYOUT.flat_space())
    flat_policy.load_state_dict(dict_policy.state_dict())
    obs = _obs_batch()
    flat = torch.as_tensor(LAYOUT.to_flat({k: v.numpy() for k, v in obs.items()}))
    for a, b in zip(_outputs(dict_policy, obs), _outputs(flat_policy, flat), strict=True):
        torch.testing.assert_close(a, b)


def test_top_k_scores_share_one_log_std_whatever_n():
    policy = _policy(ACTIONS["top_k"][0])
    assert policy.log_std.shape == (1,)
    assert _policy(ACTIONS["step_size"][0]).log_std.shape == (2,)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_cohort_size_makes_exactly_k_score_means_positive_and_keeps_their_order(k):
    free = _policy(ACTIONS["top_k"][0], pooling="attention")
    fixed = _policy(ACTIONS["top_k"][0], pooling="attention", cohort_size=k)
    obs = _obs_batch(batch=6)
    raw, centred = _outputs(free, obs)[0], _outputs(fixed, obs)[0]
    assert ((centred > 0).sum(dim=1) == k).all()
    ranked = centred.sort(dim=1, descending=True).values
    torch.testing.assert_close(ranked[:, k - 1], -ranked[:, k])  # 0 is midway between the k-th and (k+1)-th
    np.testing.assert_allclose(centred - raw, (centred - raw)[:, :1].expand_as(raw), atol=1e-6)  # one shift a row
    actions, _ = fixed.predict({k_: v.numpy() for k_, v in obs.items()}, deterministic=True)
    assert ((actions > 0).sum(axis=1) == k).all()  # the top-k action trains a cohort of exactly k


def test_cohort_size_of_n_or_more_selects_everyone_and_needs_a_score_action():
    policy = _policy(ACTIONS["top_k"][0], cohort_size=N)
    assert (_outputs(policy, _obs_batch())[0] > 0).all()
    with pytest.raises(ConfigError, match="cohort_size=2 needs a top-k Box"):
        _policy(ACTIONS["selection"][0], cohort_size=2)


def _env(env_id=TINY, n_clients=None, **config):
    if n_clients is not None:
        config["federation"] = {"clients": {"n_clients": n_clients}}
    return gym.make(env_id, config={"federation_seed": 0, **config})


@pytest.mark.parametrize("n_clients", [6, 12])
def test_a_policy_trained_on_4_clients_acts_with_other_n(n_clients, tmp_path):
    model = PPO(EquivariantActorCriticPolicy, _env(observation="dict"), policy_kwargs=SMALL, **PPO_TINY)
    model.learn(64)
    env = _env(n_clients=n_clients, observation="dict")
    for moved in (adapt_model(model, env), load_for_env(_saved(model, tmp_path), env, PPO)):
        for name, weight in model.policy.state_dict().items():
            torch.testing.assert_close(moved.policy.state_dict()[name], weight)
        obs, _ = env.reset(seed=3)
        action, _ = moved.predict(obs, deterministic=True)
        assert action.shape == (n_clients,)
        env.step(action)
    policy = adapt_policy(model.policy, env.observation_space, env.action_space)
    assert policy.predict(obs, deterministic=True)[0].shape == (n_clients,)


def test_a_masked_full_control_policy_moves_to_another_n_and_respects_its_masks():
    model = MaskablePPO(
        MaskableEquivariantActorCriticPolicy, _env("QFL/FullControl-Tiny-v0"), policy_kwargs=SMALL, **PPO_TINY
    )
    model.learn(32)
    env = _env("QFL/FullControl-Tiny-v0", n_clients=7)
    moved = adapt_model(model, env)
    obs, _ = env.reset(seed=0)
    masks = env.unwrapped.action_masks()
    action, _ = moved.predict(obs, action_masks=masks)
    assert action.shape == (7 + 3,)
    assert not np.any(action[:7][~masks.reshape(-1)[: 2 * 7].reshape(7, 2)[:, 1]])


def test_adapting_to_the_same_n_keeps_the_actions():
    model = PPO(EquivariantActorCriticPolicy, _env(), policy_kwargs={**SMALL, "pooling": "attention"}, **PPO_TINY)
    model.learn(32)
    moved = adapt_model(model, _env())
    obs = np.stack([_env().reset(seed=s)[0] for s in range(4)])
    np.testing.assert_array_equal(moved.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_only_equivariant_policies_move():
    model = PPO("MlpPolicy", _env(), **PPO_TINY)
    with pytest.raises(TypeError, match="EquivariantPolicy"):
        adapt_model(model, _env(n_clients=6))


def _saved(model, tmp_path):
    path = tmp_path / "model.zip"
    model.save(path)
    return path


def _ppo_loss(policy, batch, masked=False):
    kwargs = {"action_masks": batch.action_masks} if masked else {}
    values, log_prob, _ = policy.evaluate_actions(batch.observations, batch.actions, **kwargs)
    adv = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    ratio = torch.exp(log_prob - batch.old_log_prob)
    policy_loss = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()
    return policy_loss + 0.5 * torch.nn.functional.mse_loss(batch.returns, values.flatten())


@pytest.mark.parametrize(
    ("algo", "cls", "env_id"),
    [
        (PPO, EquivariantActorCriticPolicy, TINY),
        (PPO, EquivariantActorCriticPolicy, "QFL/StepSize-Tiny-v0"),
        (MaskablePPO, MaskableEquivariantActorCriticPolicy, TINY),
        (MaskablePPO, MaskableEquivariantActorCriticPolicy, "QFL/FullControl-Tiny-v0"),
    ],
)
def test_training_runs_and_the_loss_decreases_on_a_fixed_batch(algo, cls, env_id):
    model = algo(cls, _env(env_id), policy_kwargs=SMALL, n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(256)
    assert model.num_timesteps >= 256
    batch = next(model.rollout_buffer.get(batch_size=None))
    masked = algo is MaskablePPO
    losses = []
    for _ in range(6):
        loss = _ppo_loss(model.policy, batch, masked)
        model.policy.optimizer.zero_grad()
        loss.backward()
        model.policy.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("pooling", ["mean_max", "attention"])
def test_save_then_load_gives_identical_actions(pooling, tmp_path):
    model = PPO(EquivariantActorCriticPolicy, _env(), policy_kwargs={**SMALL, "pooling": pooling}, **PPO_TINY)
    model.learn(32)
    loaded = PPO.load(_saved(model, tmp_path))
    assert type(loaded.policy) is EquivariantActorCriticPolicy
    assert loaded.policy.equivariant_config == model.policy.equivariant_config
    obs = np.stack([_env().reset(seed=s)[0] for s in range(4)])
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"pooling": "median"}, ["pooling", "'median'", "allowed: attention, max, mean, mean_max"]),
        ({"poolng": "mean"}, ["unknown key 'poolng'", "pooling", "net_arch"]),
        ({"embed_dim": 30, "pooling": "attention"}, ["embed_dim=30", "attention_heads=4"]),
        ({"embed_dim": 0}, ["embed_dim"]),
        ({"features_extractor_class": None}, ["'features_extractor_class' is set by the equivariant policy"]),
    ],
)
def test_bad_kwargs_name_the_field_and_the_allowed_values(kwargs, words):
    with pytest.raises(ConfigError) as err:
        _policy(ACTIONS["selection"][0], **kwargs)
    for word in words:
        assert word in str(err.value)


def test_per_client_true_needs_per_client_components():
    with pytest.raises(ConfigError, match="per_client=True"):
        _policy(spaces.Discrete(2), per_client=True)
    assert _policy(ACTIONS["selection"][0], per_client=False).action_layout.per_client == 0


def test_policy_names_resolve_per_algorithm():
    assert resolve_policy("EquivariantPolicy", PPO) is EquivariantActorCriticPolicy
    assert resolve_policy("EquivariantPolicy", A2C) is EquivariantActorCriticPolicy
    assert resolve_policy("EquivariantPolicy", MaskablePPO) is MaskableEquivariantActorCriticPolicy
    assert resolve_policy("MlpPolicy", PPO) == "MlpPolicy"
    with pytest.raises(ValueError, match="no variant for DQN"):
        resolve_policy("EquivariantPolicy", DQN)


def test_zoo_aliases_make_the_name_work_in_sb3_directly():
    import qflgym.agents.policies.zoo  # noqa: F401 -- adds the aliases

    assert isinstance(PPO("EquivariantPolicy", _env(), policy_kwargs=SMALL).policy, EquivariantActorCriticPolicy)


@pytest.mark.parametrize(("algo", "policy_class"), [("a2c", A2C), ("maskable-ppo", MaskablePPO)])
def test_qflgym_train_selects_the_policy_by_name_from_a_zoo_yaml(tmp_path, algo, policy_class):
    recipe = {
        TINY: {"policy": "EquivariantPolicy", "n_steps": 16, "policy_kwargs": "dict(embed_dim=16, pooling='max')"}
    }
    (tmp_path / "hp.yml").write_text(yaml.safe_dump(recipe))
    config = {"algo": algo, "env": TINY, "hyperparams": str(tmp_path / "hp.yml"), "timesteps": 32, "out": str(tmp_path)}
    result = train({**config, "eval_freq": 0, "save_freq": 0, "progress": False, "tensorboard": False})
    model = policy_class.load(result.model_path)
    assert model.policy.equivariant_config.pooling == "max"
    assert resolve_policy("EquivariantPolicy", policy_class) is type(model.policy)
    env = gym.make(TINY, config={"federation": {"clients": {"n_clients": 6}}})
    (row,) = evaluate(env, make_controller("sb3", env, path=str(result.run_dir)), seeds=[0])
    assert row["rounds"] >= 1


@pytest.mark.parametrize(("file", "algo"), [("equivariant-ppo", PPO), ("equivariant-maskable-ppo", MaskablePPO)])
def test_packaged_equivariant_recipes_build_their_policy_on_every_env(file, algo):
    path = default_hyperparams_path("ppo").with_name(f"{file}.yml")
    data = yaml.safe_load(path.read_text())
    assert data
    for env_id, hp in data.items():
        assert env_id in qflgym.envs.ENV_IDS
        trainer, kwargs = resolve(algo, hp, path.name)
        assert trainer["policy"] == "EquivariantPolicy"
        model = algo(resolve_policy(trainer["policy"], algo), gym.make(env_id), **kwargs)
        assert isinstance(model.policy, EquivariantActorCriticPolicy | MaskableEquivariantActorCriticPolicy)


def test_top_expected_count_selects_the_expected_number_of_most_likely_clients():
    p = torch.tensor([[0.9, 0.1, 0.6, 0.2, 0.3], [0.4, 0.4, 0.4, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1, 0.1]])
    expected = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=p.dtype)
    torch.testing.assert_close(top_expected_count(p), expected)


def _shift_client_logits(policy, bias):
    """Push every per-client logit by ``bias`` (so each client's own mode is 'off' for a negative bias)."""
    with torch.no_grad():
        policy.action_net.client.bias[-1] += bias


@pytest.mark.parametrize("cls", [EquivariantActorCriticPolicy, MaskableEquivariantActorCriticPolicy])
@pytest.mark.parametrize("action", ["selection", "full_control"])
def test_deterministic_selection_keeps_the_expected_number_of_clients(cls, action):
    action_space = ACTIONS[action][0]
    policy = _policy(action_space, cls=cls)
    sb3_mode = _policy(action_space, cls=cls, deterministic_selection="mode")
    for p in (policy, sb3_mode):
        _shift_client_logits(p, -0.3)  # p_on ~ 0.43 (masked: softmax of [off, on]) for every client
    obs = _obs_batch()
    with torch.no_grad():
        chosen = policy._predict(obs, deterministic=True)[:, :N]
        own_mode = sb3_mode._predict(obs, deterministic=True)[:, :N]
    assert torch.all(own_mode == 0)  # every client's own mode is off
    assert torch.all(chosen.sum(dim=1) >= 1)  # but the policy means to select about 2 of 5


def test_deterministic_selection_respects_masks():
    policy = _policy(ACTIONS["selection"][0], cls=MaskableEquivariantActorCriticPolicy)
    _shift_client_logits(policy, 3.0)  # every client likely on
    mask = np.ones((N, 2), dtype=bool)
    mask[[0, 2], 1] = False
    actions, _, _ = policy(_obs_batch(batch=1), deterministic=True, action_masks=mask.reshape(1, -1))
    assert actions.tolist() == [[0, 1, 0, 1, 1]]

"""Reward terms: the weighted sum, and the three ways users plug in their own terms."""

from __future__ import annotations

import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from qflgym.config import ConfigError
from qflgym.envs.rewards import BUILTIN_TERMS, REWARDS, RewardContext, reward_term

ENV_ID = "QFL/ClientSelection-Tiny-v0"
ALL = np.ones(4, dtype=np.int8)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _two_steps(config: dict | None = None) -> list[tuple[float, dict]]:
    env = gym.make(ENV_ID, config={"target_accuracy": None, **(config or {})})
    env.reset(seed=4)
    out = []
    for _ in range(2):
        _, reward, _, _, info = env.step(ALL)
        out.append((reward, info["rewards"]))
    return out


def participants_term(ctx: RewardContext) -> float:
    """A module-level custom term (picklable): participants this round."""
    return 0.0 if ctx.report is None else float(len(ctx.report.participants))


def test_reward_is_the_weighted_sum_of_reported_terms():
    env = gym.make(ENV_ID)
    weights = env.unwrapped.config.reward_weights
    env.reset(seed=0)
    _, reward, _, _, info = env.step(ALL)
    assert set(BUILTIN_TERMS) <= set(info["rewards"])
    assert reward == pytest.approx(sum(weights[k] * v for k, v in info["rewards"].items()))
    assert info["rewards"]["round_cost"] == 1.0
    assert info["rewards"]["communication_cost"] == pytest.approx(info["participants"] / 4)


def test_custom_term_as_a_config_callable():
    base = _two_steps()
    custom = _two_steps({"reward_terms": {"participants": participants_term}, "reward_weights": {"participants": 0.5}})
    for (r0, t0), (r1, t1) in zip(base, custom, strict=True):
        assert t1["participants"] == pytest.approx(4 * t1["communication_cost"])  # bytes of 1 of 4 clients each
        assert r1 == pytest.approx(r0 + 0.5 * t1["participants"])
        assert {k: v for k, v in t1.items() if k != "participants"} == t0


def test_custom_term_registered_with_the_decorator():
    @reward_term("test_constant_bonus", overwrite=True)
    def constant(ctx: RewardContext) -> float:
        return 2.0

    assert "test_constant_bonus" in REWARDS
    with pytest.raises(ValueError, match="already registered"):
        reward_term("accuracy_gain")(constant)  # a taken name needs overwrite=True
    base = _two_steps()
    custom = _two_steps({"reward_weights": {"test_constant_bonus": -0.25}})
    for (r0, _), (r1, t1) in zip(base, custom, strict=True):
        assert t1["test_constant_bonus"] == 2.0
        assert r1 == pytest.approx(r0 - 0.5)


def test_custom_term_from_a_third_party_entry_point(tmp_path, monkeypatch):
    (tmp_path / "qflgym_test_rewards_pkg.py").write_text(
        textwrap.dedent(
            """
            def lr_term(ctx):
                return 0.0 if ctx.report is None else 10.0 * ctx.report.lr
            """
        )
    )
    dist = tmp_path / "qflgym_test_rewards_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qflgym-test-rewards-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qflgym.rewards]\ntest_lr_term = qflgym_test_rewards_pkg:lr_term\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "qflgym_test_rewards_pkg", raising=False)
    REWARDS.reload_entry_points()  # rescan the (new) installed distributions
    custom = _two_steps({"reward_weights": {"test_lr_term": 1.0}})
    base = _two_steps()
    lr = gym.make(ENV_ID).unwrapped.config.fixed_lr
    for (r0, _), (r1, t1) in zip(base, custom, strict=True):
        assert t1["test_lr_term"] == pytest.approx(10.0 * lr)
        assert r1 == pytest.approx(r0 + 10.0 * lr)
    REWARDS.remove("test_lr_term")


def test_unknown_term_lists_the_allowed_names():
    with pytest.raises(ConfigError, match=r"reward_weights.*unknown reward term 'fast'.*accuracy_gain"):
        gym.make(ENV_ID, config={"reward_weights": {"fast": 1.0}})
    with pytest.raises(ConfigError, match="reward_terms"):
        gym.make(ENV_ID, config={"reward_terms": {"x": 3}, "reward_weights": {"x": 1.0}})


@pytest.mark.parametrize(("n_classes", "scale"), [(1, 1.0), (2, np.log(2)), (10, np.log(10))])
def test_loss_drop_is_in_units_of_ln_k_and_of_1_for_one_class(n_classes, scale):
    from qflgym.envs.rewards import loss_drop

    ctx = RewardContext(
        report=None,
        stopped=False,
        target_reached=False,
        val_accuracy=0.5,
        val_loss=0.3,
        prev_val_accuracy=0.5,
        prev_val_loss=0.8,
        rounds=1,
        round_budget=8,
        target_accuracy=None,
        n_classes=n_classes,
        bytes_scale=1.0,
        time_scale=1.0,
        shots_scale=1.0,
    )
    assert loss_drop(ctx) == pytest.approx(0.5 / scale)

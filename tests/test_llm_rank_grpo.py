"""GRPO of the per-client ranker: Plackett-Luce log-probabilities, Gumbel cohorts, group advantages, learning."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from qflgym.agents.llm.adapters import resolve_adapter, write_adapter_meta
from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.policy import load_policy, save_policy
from qflgym.agents.llm.ranker import LLMRanker, encode_rows, row_scores
from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
from qflgym.agents.llm.train.grpo_trainer import LLMGRPOTrainer, StateBank
from qflgym.agents.llm.train.rank_grpo import fit_rank_grpo, group_advantages, plackett_luce_logprob
from qflgym.agents.runtime import make_env
from qflgym.config import ConfigError

ENV = "QFL/ClientSelection-Tiny-v1"


def _fresh_ranker(env, seed: int = 0) -> tuple[LLMRanker, LLMGRPOConfig]:
    cfg = LLMGRPOConfig(env_id=ENV, model="tiny", lora_r=4, lora_alpha=8, cohort_size=2, progress=False, seed=seed)
    torch.manual_seed(seed)  # the adapter's initial weights, as LLMGRPOTrainer.train seeds them
    model, tok = cfg.fresh_model(resolve_adapter(cfg.adapter))
    return LLMRanker(model, tok, TextCodec.from_env(env, cfg.codec_config()), seed=seed), cfg


def _set_probability(scores: torch.Tensor, row: int, k: int) -> float:
    """P(``row`` is in a Plackett-Luce draw of ``k`` rows), summed over the ordered draws."""
    return sum(
        math.exp(float(plackett_luce_logprob(scores, order)))
        for order in itertools.permutations(range(len(scores)), k)
        if row in order
    )


def test_plackett_luce_is_the_law_of_ordered_draws_without_replacement():
    s = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    for t in (1.0, 0.5):
        total = sum(math.exp(float(plackett_luce_logprob(s, o, t))) for o in itertools.permutations(range(4), 2))
        assert total == pytest.approx(1.0, abs=1e-12)
    e = torch.exp(s / 0.5)
    by_hand = math.log(e[2] / e.sum()) + math.log(e[0] / (e.sum() - e[2]))
    assert float(plackett_luce_logprob(s, [2, 0], 0.5)) == pytest.approx(by_hand, abs=1e-12)


def test_gumbel_cohorts_follow_the_plackett_luce_law():
    env = make_env(ENV)
    ranker, _ = _fresh_ranker(env)
    ranker.temperature = 0.7
    scores = torch.tensor([0.2, 1.5, -0.4, 0.9, 0.0, 2.0])
    available = np.array([True, True, True, True, False, True])
    rows = np.flatnonzero(available)
    n = 20_000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        order = tuple(ranker.cohort_order(scores, available, deterministic=False))
        assert 4 not in order
        counts[order] = counts.get(order, 0) + 1
    local = {int(r): j for j, r in enumerate(rows)}
    for order in itertools.permutations(rows.tolist(), 2):
        p = math.exp(float(plackett_luce_logprob(scores[rows].double(), [local[i] for i in order], 0.7)))
        assert counts.get(order, 0) / n == pytest.approx(p, abs=0.012), order
    assert ranker.cohort_order(scores, available, deterministic=True) == [5, 1]
    env.close()


def test_group_advantages_are_normalized_within_the_group():
    assert np.allclose(group_advantages([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0]) / (1 + 1e-4))
    assert np.array_equal(group_advantages([2.0, 2.0]), np.zeros(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_grpo_raises_the_probability_of_the_rewarded_client(seed):
    env = make_env(ENV)
    ranker, cfg = _fresh_ranker(env, seed)
    bank = StateBank()
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    while len(bank) < 4:
        if ranker.codec.available(obs).all():
            bank.add(env.unwrapped.get_state(), obs, 0)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset(seed=len(bank) + 1)

    def reward(prompts, completions, state_id):
        del prompts
        return [float(ranker.codec.parse(c, bank.observations[s], count=False).decision.selected[3]) for c, s in
                zip(completions, state_id, strict=True)]  # fmt: skip

    def p_client_3() -> float:
        enc = encode_rows(ranker.tokenizer, ranker.codec, ranker.codec.prompts(np.stack(bank.observations)))
        with torch.no_grad():
            s = row_scores(ranker.model, **enc, direction=ranker.direction).double()
        return float(np.mean([_set_probability(row, 3, 2) for row in s]))

    before = p_client_3()
    run = dataclasses.replace(cfg, max_steps=20, prompts_per_step=2, num_generations=8, learning_rate=5e-3)
    log = fit_rank_grpo(ranker, bank, reward, dataclasses.replace(run, logging_steps=4))
    after = p_client_3()
    assert after > before + 0.3, (before, after)
    assert len(log.rewards) == 5 and log.rewards[-1] > log.rewards[0]
    assert [h["step"] for h in log.history] == [4, 8, 12, 16, 20] and len(log.step_times) == 20
    assert not ranker.model.training
    averse, _ = _fresh_ranker(env, seed)  # a negative env_reward_weight makes the same reward a cost
    ranker.model, ranker.direction = averse.model, averse.direction
    fit_rank_grpo(ranker, bank, reward, dataclasses.replace(run, env_reward_weight=-1.0))
    assert p_client_3() < before - 0.2
    env.close()


def test_grpo_trains_a_saved_ranker_and_saves_a_ranker(tmp_path):
    env = make_env(ENV)
    ranker, cfg = _fresh_ranker(env)
    init = save_policy(
        tmp_path / "init", ranker.model, model_name="tiny", adapter_name="lora", codec_config=cfg.codec_config(),
        extra={"env_id": ENV, "head": "rank", "teacher": "cost-aware", "teacher_kwargs": {"k": 2}, "model_seed": 0},
    )  # fmt: skip
    write_adapter_meta(init, cfg.adapter_config(), "lora")
    run = LLMGRPOConfig(
        env_id=ENV, init_policy=str(init), state_policy="random-k", episodes=1, max_steps=2, num_generations=3,
        beta=0.1, horizon=2, rollout_policy="cost-aware", rollout_policy_kwargs={"k": 2, "loss_weight": 0.5},
        out=str(tmp_path), run_name="rank-grpo", progress=False, torch_threads=1, logging_steps=1,
    )  # fmt: skip
    result = LLMGRPOTrainer(run, argv=["qflgym", "llm", "grpo"]).train()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(result.rewards) == 2
    assert all(np.isfinite(e["kl"]) and e["kl"] >= 0 for e in metrics["log_history"])
    meta = json.loads((result.policy_dir / "qflgym_llm.json").read_text())
    assert meta["head"] == "rank" and meta["trainer"] == "grpo"
    trained = load_policy(result.policy_dir, env)
    assert isinstance(trained, LLMRanker)
    batch = np.stack([env.reset(seed=s)[0] for s in range(3)])
    assert trained.predict(batch, deterministic=True)[0].shape == (3, *env.action_space.shape)
    with pytest.raises(ConfigError, match=r"is a ranker .* drop max_completion_length"):
        LLMGRPOTrainer(LLMGRPOConfig(env_id=ENV, init_policy=str(init), max_completion_length=8)).build_model()
    with pytest.raises(ConfigError, match="rollout_policy_kwargs: 'repeat' takes none"):
        LLMGRPOConfig(env_id=ENV, rollout_policy_kwargs={"k": 2})
    env.close()

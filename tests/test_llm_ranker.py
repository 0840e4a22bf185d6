"""The LLM as a per-client ranker (``head: rank``): row positions, the listwise loss, top-k actions, SFT (tiny)."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from qflgym.agents.llm.codec import CodecConfig, TextCodec
from qflgym.agents.llm.models import load_model
from qflgym.agents.llm.ranker import LLMRanker, encode_rows, rank_loss, row_scores, tokenize_rows
from qflgym.agents.llm.train.sft_config import LLMSFTConfig
from qflgym.agents.runtime import make_env
from qflgym.config import ConfigError

ENV = "QFL/ClientSelection-Tiny-v1"


@pytest.fixture(scope="module")
def env():
    env = make_env(ENV)
    yield env
    env.close()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


def _observations(env, n: int, seed: int = 0) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    while len(out) < n:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append(obs if not (terminated or truncated) else env.reset(seed=seed + len(out))[0])
    return out


def test_row_positions_are_the_last_token_of_each_client_row(env, tiny):
    _, tok = tiny
    codec = TextCodec.from_env(env, CodecConfig(cohort_size=2))
    obs, _ = env.reset(seed=3)
    prompt = codec.prompt(obs)
    ends = codec.client_row_ends(prompt)
    lines = prompt.split("\n")
    header = next(i for i, line in enumerate(lines) if line.startswith("id "))
    assert [prompt[e - len(lines[header + 1 + i]) : e] for i, e in enumerate(ends)] == lines[header + 1 : header + 7]
    assert all(prompt[e] == "\n" for e in ends)
    ids, positions = tokenize_rows(tok, codec, prompt)
    offsets = tok(prompt, return_offsets_mapping=True).offset_mapping
    assert ids == tok(prompt).input_ids
    for end, pos in zip(ends, positions, strict=True):
        assert offsets[pos][0] < end <= offsets[pos + 1][0], (end, offsets[pos], offsets[pos + 1])
    with pytest.raises(ValueError, match="no client table of 6 rows"):
        codec.client_row_ends("QFL control.\naction:")


def test_rank_loss_is_the_listwise_cross_entropy():
    scores = torch.tensor([[1.0, 2.0, 0.5, 3.0], [0.0, 0.0, 1.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    z0 = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))  # row 0 without the unavailable client 3
    z1 = math.log(2 + math.e + math.exp(-1.0))
    expected = ((z0 - 1.0) + (z0 - 0.5)) / 2 / 2 + (z1 - 0.0) / 2
    assert float(rank_loss(scores, target, valid)) == pytest.approx(expected, rel=1e-6)


def test_ranker_picks_the_top_k_available_clients(env, tiny):
    model, tok = tiny
    ranker = LLMRanker(model, tok, TextCodec.from_env(env, CodecConfig(cohort_size=2)), seed=0)
    observations = _observations(env, 6)
    batch = np.stack(observations)
    actions, _ = ranker.predict(batch, deterministic=True)
    scores = ranker.scores(ranker.codec.prompts(batch))
    for obs, action, s in zip(batch, actions, scores, strict=True):
        available = ranker.codec.available(obs)
        chosen = np.flatnonzero(action > 0)
        order = sorted(np.flatnonzero(available), key=lambda i: (-float(s[i]), i))
        assert sorted(chosen) == sorted(order[:2]) if available.sum() >= 2 else set(chosen) <= set(order)
    one, _ = ranker.predict(batch[0], deterministic=True)
    assert np.array_equal(one, actions[0])  # a batch scores each prompt as alone
    sampled = {tuple(ranker.predict(batch[0], deterministic=False)[0]) for _ in range(20)}
    assert len(sampled) > 1  # Gumbel top-k explores
    assert ranker.invalid_rate == 0.0 and ranker.episode_metrics()["invalid_rate"] == 0.0


def test_ranker_needs_a_fixed_cohort_on_a_selection_only_env(env, tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="needs cohort_size"):
        LLMRanker(model, tok, TextCodec.from_env(env))
    steps = make_env("QFL/FullControl-Tiny-v1")
    with pytest.raises(ConfigError, match="only selects clients"):
        LLMRanker(model, tok, TextCodec.from_env(steps, CodecConfig(cohort_size=2)))
    steps.close()
    with pytest.raises(ConfigError, match="head 'rank' needs cohort_size"):
        LLMSFTConfig(head="rank")
    with pytest.raises(ConfigError, match="head must be one of completion, rank"):
        LLMSFTConfig(head="score")
    with pytest.raises(ConfigError, match="drop constrained=False, max_new_tokens"):
        LLMRanker.options({"constrained": False, "max_new_tokens": 4, "temperature": 1.0})


def test_rank_sft_lowers_the_loss_and_saves_a_loadable_ranker(tmp_path, env):
    from qflgym.agents.cli.main import main
    from qflgym.agents.llm.policy import load_policy
    from qflgym.agents.llm.train.rank_fit import ranking_examples
    from qflgym.agents.llm.train.rollout import make_teacher, rollout

    status = main(
        [
            "llm", "sft", "--env-id", ENV, "--teacher", "cost-aware", "--teacher-kwargs", "{k: 2}", "--head", "rank",
            "--cohort-size", "2", "--episodes", "3", "--max-steps", "30", "--batch-size", "4",
            "--learning-rate", "5e-3", "--logging-steps", "5", "--out", str(tmp_path), "--run-name", "rank",
            "--progress", "false", "--torch-threads", "1",
        ]
    )  # fmt: skip
    assert status == 0
    run = tmp_path / "sft" / "rank"
    meta = json.loads((run / "policy" / "qflgym_llm.json").read_text())
    assert meta["head"] == "rank" and meta["codec"]["cohort_size"] == 2
    ranker = load_policy(run / "policy", env)
    assert isinstance(ranker, LLMRanker)
    base, tok = load_model("tiny", seed=0)
    codec = ranker.codec
    teacher = make_teacher("cost-aware", env, kwargs={"k": 2})
    data = rollout(env, teacher, codec, 2, 0, keep_observations=True)
    examples = ranking_examples(data.records, data.observations, codec, tok)
    assert len(examples) == len(data.records) and all(sum(e["target"]) == 2 for e in examples)

    def loss(model):
        enc = encode_rows(tok, codec, [r["prompt"] for r in data.records])
        with torch.no_grad():
            s = row_scores(model, **enc, direction=LLMRanker(model, tok, codec).direction)
        target = torch.tensor([e["target"] for e in examples])
        return float(rank_loss(s, target, torch.tensor([e["valid"] for e in examples])))

    assert loss(ranker.model) < 0.93 * loss(base)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["losses"][-1] < metrics["losses"][0]
    again = load_policy(run / "policy", env)
    batch = np.stack(_observations(env, 4, seed=7))
    assert np.array_equal(ranker.predict(batch, deterministic=True)[0], again.predict(batch, deterministic=True)[0])


def test_rank_sft_with_dagger_refits_on_the_rankers_own_states(tmp_path):
    from qflgym.agents.llm.train.sft_trainer import LLMSFTTrainer

    cfg = LLMSFTConfig(
        env_id=ENV, teacher="cost-aware", teacher_kwargs={"k": 2}, head="rank", cohort_size=2, episodes=3,
        episode_steps=2, max_steps=4, batch_size=2, learning_rate=5e-3, logging_steps=2, torch_threads=1,
        dagger_iterations=2, dagger_episodes=2, dagger_episode_steps=3, dagger_steps=3, out=str(tmp_path),
        run_name="dagger", progress=False,
    )  # fmt: skip
    result = LLMSFTTrainer(cfg).train()
    records = [json.loads(line) for line in (result.run_dir / "data.jsonl").open()]
    rounds = [r["dagger"] for r in records]
    assert rounds == [0] * 6 + [1] * 6 + [2] * 6  # 3 x 2 teacher pairs, then 2 x 3 visited states per round
    assert [d["seed"] for d in result.dagger] == [3, 5]  # after the teacher's seeds 0..2, disjoint per round
    assert [d["pairs"] for d in result.dagger] == [12, 18] and result.n_pairs == 18
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 + 2 * 3 and len(metrics["dagger"]) == 2
    assert all(math.isfinite(d["policy_return"]) for d in result.dagger)
    for bad in ({"dagger_iterations": -1}, {"dagger_steps": 0}, {"dagger_episodes": 0}, {"dagger_episode_steps": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            LLMSFTConfig(head="rank", cohort_size=2, **bad)


def test_int8_ranker_keeps_the_float_scores_up_to_quantization_error(tmp_path, env):
    from qflgym.agents.llm import make_llm_controller
    from qflgym.agents.llm.policy import load_policy
    from qflgym.agents.llm.train.sft_trainer import LLMSFTTrainer

    cfg = LLMSFTConfig(
        env_id=ENV, teacher="cost-aware", teacher_kwargs={"k": 2}, head="rank", cohort_size=2, episodes=2,
        max_steps=2, batch_size=2, torch_threads=1, out=str(tmp_path), run_name="q", progress=False,
    )  # fmt: skip
    policy_dir = LLMSFTTrainer(cfg).train().policy_dir
    full = load_policy(policy_dir, env)
    int8 = load_policy(policy_dir, env, quantize="int8")
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    linears = {n: m for n, m in int8.model.model.named_modules() if isinstance(m, (torch.nn.Linear, Int8Linear))}
    kept = {n for n, m in linears.items() if not isinstance(m, Int8Linear)}
    assert kept and kept == {n for n in linears if n.endswith("down_proj")}  # all but the MLP output projections
    every = load_policy(policy_dir, env, quantize="int8-all")
    kinds = {type(m) for m in every.model.model.modules()}
    assert Int8Linear in kinds and torch.nn.Linear not in kinds
    assert type(int8.model.lm_head) is torch.nn.Linear and torch.equal(int8.direction, full.direction)
    prompts = full.codec.prompts(np.stack(_observations(env, 6, seed=3)))
    a, b = full.scores(prompts), int8.scores(prompts)
    assert not torch.equal(a, b)  # quantized ...
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())  # ... up to its error
    for bad in ({"quantize": "int4"}, {"quantize": "int8", "merge": False}, {"quantize": "int8", "dtype": "bfloat16"}):
        with pytest.raises(ValueError, match="quantize must be one of int8, int8-all"):
            load_policy(policy_dir, env, **bad)
    with pytest.raises(ValueError, match="quantize applies to a saved policy"):
        make_llm_controller(env, quantize="int8")


def test_membership_loss_fits_the_teachers_soft_cohort_centred_on_its_cutoff():
    from qflgym.agents.llm.ranker import membership_loss, membership_targets
    from qflgym.agents.policies.equivariant import centre_on_cohort

    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])
    teacher = torch.tensor([[0.9, -0.2, 0.4, 5.0, -0.8]])  # the unavailable client's score is not the cutoff
    centred = centre_on_cohort(teacher, 2, valid)
    np.testing.assert_allclose(centred.numpy(), [[0.8, -0.3, 0.3, 4.9, -0.9]], atol=1e-6)
    target = membership_targets(teacher, valid, 2, 0.5)
    expected = [1 / (1 + math.exp(-c / 0.5)) for c in (0.8, -0.3, 0.3)] + [0.0, 1 / (1 + math.exp(0.9 / 0.5))]
    np.testing.assert_allclose(target.numpy()[0], expected, rtol=1e-6)
    student = torch.tensor([[2.0, 0.0, 1.0, -3.0, 0.5]])  # cutoff 0.75: logits 1.25, -0.75, 0.25, -, -0.25
    bce = [
        -(p * math.log(1 / (1 + math.exp(-z))) + (1 - p) * math.log(1 / (1 + math.exp(z))))
        for p, z in zip([expected[0], expected[1], expected[2], expected[4]], (1.25, -0.75, 0.25, -0.25), strict=True)
    ]
    assert float(membership_loss(student, target, valid, 2)) == pytest.approx(sum(bce) / 4, rel=1e-6)
    assert float(membership_loss(centre_on_cohort(teacher, 2, valid) / 0.5, target, valid, 2)) < float(
        membership_loss(student, target, valid, 2)
    )  # the teacher's own centred scores / T fit best


def test_soft_rank_examples_carry_the_teachers_membership_and_reject_other_actions(env, tiny):
    from qflgym.agents.llm.train.rank_fit import ranking_examples
    from qflgym.agents.llm.train.rollout import make_teacher, rollout

    _, tok = tiny
    codec = TextCodec.from_env(env, CodecConfig(cohort_size=2))
    data = rollout(env, make_teacher("cost-aware", env, kwargs={"k": 2}), codec, 2, 0, keep_observations=True)
    assert len(data.labels) == len(data.records)
    labels = [np.linspace(-1.0, 1.0, len(label)) for label in data.labels]  # one score per client, the last highest
    soft = ranking_examples(data.records, data.observations, codec, tok, labels, temperature=0.25)
    hard = ranking_examples(data.records, data.observations, codec, tok)
    assert len(soft) == len(hard) > 0
    for example in soft:
        target, valid = np.array(example["target"]), np.array(example["valid"], dtype=bool)
        assert (target[~valid] == 0).all() and ((target[valid] > 0) & (target[valid] < 1)).all()
        top = np.flatnonzero(valid)[-2:]  # the two highest available scores are the cohort
        assert (target[top] > 0.5).all() and (np.delete(target, top)[np.delete(valid, top)] < 0.5).all()
    with pytest.raises(ConfigError, match="one score per client"):
        ranking_examples(data.records, data.observations, codec, tok, [lb[:2] for lb in labels], temperature=0.25)
    with pytest.raises(ConfigError, match="raw action of every recorded decision"):
        ranking_examples(data.records, data.observations, codec, tok, None, temperature=0.25)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="target_temperature"):
            LLMSFTConfig(head="rank", cohort_size=2, target_temperature=bad)
    with pytest.raises(ConfigError, match="target_temperature"):
        LLMSFTConfig(target_temperature=0.5)  # the completion head has no scores


def test_rank_sft_with_soft_targets_lowers_the_membership_loss(tmp_path, env):
    from qflgym.agents.llm.policy import load_policy
    from qflgym.agents.llm.ranker import membership_loss
    from qflgym.agents.llm.train.rank_fit import ranking_examples
    from qflgym.agents.llm.train.rollout import make_teacher, rollout
    from qflgym.agents.llm.train.sft_trainer import LLMSFTTrainer

    cfg = LLMSFTConfig(
        env_id=ENV, teacher="cost-aware", teacher_kwargs={"k": 2}, head="rank", cohort_size=2, episodes=3,
        max_steps=30, batch_size=4, learning_rate=5e-3, logging_steps=5, torch_threads=1, target_temperature=0.5,
        out=str(tmp_path), run_name="soft", progress=False,
    )  # fmt: skip
    result = LLMSFTTrainer(cfg).train()
    ranker = load_policy(result.run_dir / "policy", env)
    base, tok = load_model("tiny", seed=0)
    codec = ranker.codec
    data = rollout(env, make_teacher("cost-aware", env, kwargs={"k": 2}), codec, 2, 0, keep_observations=True)
    examples = ranking_examples(data.records, data.observations, codec, tok, data.labels, temperature=0.5)
    keep = [i for i, r in enumerate(data.records) if codec.available(data.observations[i]).sum() > 2]
    assert len(examples) == len(keep) > 0

    def loss(model):
        enc = encode_rows(tok, codec, [data.records[i]["prompt"] for i in keep])
        with torch.no_grad():
            s = row_scores(model, **enc, direction=LLMRanker(model, tok, codec).direction)
        target = torch.tensor([e["target"] for e in examples])
        return float(membership_loss(s, target, torch.tensor([e["valid"] for e in examples]), 2))

    assert loss(ranker.model) < 0.9 * loss(base)
    losses = json.loads((result.run_dir / "metrics.json").read_text())["losses"]
    assert losses[-1] < losses[0] < 1.5  # a binary cross-entropy near ln 2 at the start, not a listwise one

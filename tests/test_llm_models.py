"""LLM models, adapters and the constrained-decoding policy (tiny model only)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from qflgym.agents.llm.adapters import ADAPTERS, AdapterConfig, AdapterUnavailable, resolve_adapter
from qflgym.agents.llm.codec import CodecConfig, TextCodec
from qflgym.agents.llm.models import MODELS, build_tiny_tokenizer, load_model
from qflgym.agents.llm.policy import LLMPolicy, load_policy, save_policy
from qflgym.agents.runtime import make_env


@pytest.fixture(scope="module")
def full_env():
    env = make_env("QFL/FullControl-Tiny-v0")
    env.reset(seed=0)
    yield env
    env.close()


def test_registries_list_models_and_adapters():
    assert {"gemma3-270m", "tiny"} <= set(MODELS.names())
    assert {"lora", "qlora", "qpa", "qaa"} <= set(ADAPTERS.names())
    with pytest.raises(KeyError, match="allowed: gemma3-270m, tiny"):
        load_model("no-such-model")


def test_tiny_model_is_deterministic_and_offline():
    m1, t1 = load_model("tiny", seed=3)
    m2, t2 = load_model("tiny", seed=3)
    m3, _ = load_model("tiny", seed=4)
    assert t1.get_vocab() == t2.get_vocab() == build_tiny_tokenizer(3).get_vocab()
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), n
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)
    assert m1.config.hidden_size == 64 and m1.config.num_hidden_layers == 2
    ids = t1(" select 1 4 7 | lr 0.05 | steps 2 | stop no").input_ids
    assert t1.decode(ids) == " select 1 4 7 | lr 0.05 | steps 2 | stop no"
    assert len(ids) < 25  # the BPE learned the codec's vocabulary


def test_qlora_is_never_chosen_silently():
    ok, why = ADAPTERS.get("qlora").available()
    if ok:
        pytest.skip("CUDA and bitsandbytes present")
    assert "CUDA" in why or "bitsandbytes" in why
    with pytest.raises(AdapterUnavailable, match="qlora"):
        resolve_adapter("qlora")
    assert resolve_adapter("auto", verbose=False).name == "lora"
    with pytest.raises(KeyError, match="allowed"):
        resolve_adapter("no-such-adapter")


def test_adapter_save_load_identical_outputs(tmp_path, full_env):
    model, tok = load_model("tiny", seed=0)
    adapter = ADAPTERS.get("lora")
    model = adapter.attach(model, AdapterConfig(r=4, dropout=0.0), ("q_proj", "v_proj"))
    with torch.no_grad():  # make the adapter non-trivial (LoRA B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    codec = TextCodec.from_env(full_env)
    obs, _ = full_env.reset(seed=1)
    ids = tok(codec.prompt(obs), return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
    path = save_policy(tmp_path / "policy", model, model_name="tiny", adapter_name="lora", codec_config=codec.config)
    policy = load_policy(path, full_env, seed=0, merge=False)
    with torch.no_grad():
        after = policy.model(ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    merged = load_policy(path, full_env, seed=0)  # LoRA folded into the weights: no adapter modules left
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, after, rtol=1e-5, atol=1e-5)
    fresh, _ = load_model("tiny", seed=0)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids).logits, after)  # the adapter matters
    # and the policies act identically
    original = LLMPolicy(model, tok, TextCodec.from_env(full_env), seed=0)
    obs_batch = np.stack([full_env.observation_space.sample() for _ in range(3)])
    a1, _ = original.predict(obs_batch, deterministic=True)
    a2, _ = policy.predict(obs_batch, deterministic=True)
    np.testing.assert_array_equal(a1, a2)


def _reference_greedy(policy: LLMPolicy, prompt: str) -> str:
    """Constrained greedy decoding without KV cache or batching: full forward each step."""
    tok, model, constraint = policy.tokenizer, policy.model, policy.constraint
    ids = tok(prompt, return_tensors="pt").input_ids
    state, out = constraint.start(), []
    with torch.no_grad():
        for _ in range(policy.max_new_tokens):
            allowed, nexts = constraint.allowed(state)
            j = int(torch.argmax(model(ids).logits[0, -1][allowed]))
            token = int(allowed[j])
            if token == tok.eos_token_id:
                break
            out.append(token)
            state = nexts[j]
            following, _ = constraint.allowed(state)
            if following.numel() == 1 and int(following[0]) == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return tok.decode(out)


@pytest.mark.parametrize("env_id", ["QFL/FullControl-Tiny-v0", "QFL/ClientSelection-Tiny-v0"])
def test_policy_constrained_decoding_matches_reference_and_is_valid(env_id):
    env = make_env(env_id)
    model, tok = load_model("tiny", seed=1)
    codec = TextCodec.from_env(env)
    policy = LLMPolicy(model, tok, codec, seed=0)
    obs = []
    o, _ = env.reset(seed=5)
    for _ in range(4):
        obs.append(o)
        o, *_ = env.step(codec.action_codec.encode(codec.fallback(o)))  # never stops
    obs = np.stack(obs)
    actions, state = policy.predict(obs, deterministic=True)  # batched, left-padded, KV-cached
    assert state is None and actions.shape[0] == 4
    batched = list(policy.last_completions)
    assert batched == [_reference_greedy(policy, codec_prompt) for codec_prompt in policy.codec.prompts(obs)]
    stepwise = LLMPolicy(model, tok, codec, seed=0, lookahead=0)  # one token per pass, no drafts
    stepwise.predict(obs, deterministic=True)
    assert stepwise.last_completions == batched
    assert policy.forward_passes < stepwise.forward_passes  # drafts were verified in fewer passes
    for row in (2, 0, 2, 2):  # changed or repeated observations: drafts from the last completion
        before = policy.forward_passes
        again, _ = policy.predict(obs[row], deterministic=True)
        np.testing.assert_array_equal(again, actions[row])
        assert policy.last_completions == [batched[row]]
    ids, _ = policy.generate_ids(policy.codec.prompts(obs[2:3]))  # the same completion's tokens
    before, length = policy.forward_passes, len(ids[0])
    policy.predict(obs[2], deterministic=True)
    assert policy.forward_passes - before <= -(-length // (policy.lookahead + 1))  # drafted in full
    single, _ = policy.predict(obs[2], deterministic=True)
    np.testing.assert_array_equal(single, actions[2])
    grouped, _ = policy.predict(obs[[1, 1, 3, 1]], deterministic=True)  # shared prefill, repeated cache rows
    np.testing.assert_array_equal(grouped, actions[[1, 1, 3, 1]])
    for _ in range(3):
        sampled, _ = policy.predict(obs, deterministic=False)
        for a in sampled:
            assert env.action_space.contains(np.asarray(a, dtype=env.action_space.dtype))
    assert policy.invalid_rate == 0.0
    assert all(policy.grammar.matches(t) for t in policy.last_completions)
    metrics = policy.episode_metrics()
    assert metrics["invalid_rate"] == 0.0 and metrics["decision_latency_s"] > 0
    env.close()


def test_constrained_decoding_with_a_cohort_size_names_exactly_k_clients():
    env = make_env("QFL/ClientSelection-Tiny-v1")
    model, tok = load_model("tiny", seed=1)
    policy = LLMPolicy(model, tok, TextCodec.from_env(env, CodecConfig(cohort_size=2)), seed=0)
    o, _ = env.reset(seed=3)
    for _ in range(3):
        for deterministic in (True, False):
            policy.predict(o, deterministic=deterministic)
            ids = policy.last_completions[0].split("select ")[1].split()
            assert len(ids) == 2 and ids == sorted(ids, key=int), policy.last_completions
        o, *_ = env.step(env.action_space.sample())
    assert policy.invalid_rate == 0.0
    env.close()


def test_free_generation_counts_invalid_output():
    env = make_env("QFL/ClientSelection-Tiny-v0")
    obs, _ = env.reset(seed=0)
    model, tok = load_model("tiny", seed=0)
    policy = LLMPolicy(model, tok, TextCodec.from_env(env), constrained=False, max_new_tokens=6)
    action, _ = policy.predict(obs, deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype))
    assert policy.codec.stats["completions"] == 1
    assert policy.invalid_rate == 1.0  # a random tiny model does not speak the grammar
    env.close()

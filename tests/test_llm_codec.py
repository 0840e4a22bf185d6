"""Text codec and grammar of the LLM policy: round trips per env, fallbacks, parser fuzzing."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qflgym.agents.llm.codec import ActionSpec, CodecConfig, TextCodec, format_number
from qflgym.agents.llm.grammar import ActionGrammar
from qflgym.agents.runtime import make_env
from qflgym.config import ConfigError

ENV_IDS = [
    "QFL/ClientSelection-Tiny-v0",
    "QFL/StepSize-Tiny-v0",
    "QFL/RoundTermination-Tiny-v0",
    "QFL/FullControl-Tiny-v0",
    "QFL/ClientSelection-v0",
    "QFL/FullControl-v0",
    "QFL/ClientSelection-Tiny-v1",
    "QFL/FullControl-Tiny-v1",
]
BUDGET = ("QFL/ClientSelection-Tiny-v0", {"selection_budget": 2})


@pytest.fixture(scope="module")
def envs():
    built = {env_id: make_env(env_id) for env_id in ENV_IDS}
    built["budget"] = make_env(*BUDGET)
    for i, env in enumerate(built.values()):
        env.reset(seed=i)
    yield built
    for env in built.values():
        env.close()


def _same_decision(a, b, spec: ActionSpec, rel: float = 0.0) -> bool:
    if spec.select and not np.array_equal(a.selected, b.selected):
        return False
    if spec.lr and abs(a.lr - b.lr) > rel * abs(a.lr):
        return False
    if spec.steps and a.local_steps != b.local_steps:
        return False
    return not (spec.stop and a.stop != b.stop)


@pytest.mark.parametrize("key", [*ENV_IDS, "budget"])
def test_round_trip_every_env(envs, key):
    env = envs[key]
    codec = TextCodec.from_env(env)
    exact = TextCodec.from_env(env, CodecConfig(lr_digits=None))
    action_codec = env.unwrapped.action_codec
    space = env.action_space
    space.seed(0)
    grammar = ActionGrammar(codec.spec, codec.config.lr_digits)
    continuous_lr = codec.spec.lr and codec.spec.lr_grid is None
    for _ in range(200):
        action = space.sample()
        decision = action_codec.decode(action)
        # exact codec: decision -> text -> decision is the identity, hence action -> text -> action too
        text = exact.render(decision)
        result = exact.parse(text)
        assert result.valid and result.strict, (text, result.errors)
        assert _same_decision(result.decision, decision, codec.spec)
        np.testing.assert_array_equal(action_codec.encode(result.decision), action_codec.encode(decision))
        # default codec: exact on discrete envs; lr within the printed precision on the continuous box
        text = codec.render(decision)
        assert grammar.matches(text), text
        result = codec.parse(text)
        assert result.valid and result.strict, (text, result.errors)
        assert _same_decision(result.decision, decision, codec.spec, rel=5e-4 if continuous_lr else 0.0)
        if not continuous_lr:
            np.testing.assert_array_equal(action_codec.encode(result.decision), action_codec.encode(decision))
            if space.__class__.__name__ in ("MultiBinary", "MultiDiscrete", "Discrete"):
                np.testing.assert_array_equal(action_codec.encode(result.decision), action)
        # text -> action -> text is the identity for canonical text
        assert codec.render(codec.parse(text).decision) == text
    assert codec.invalid_rate == 0.0


def test_controlled_fields_match_env(envs):
    fields = {key: TextCodec.from_env(env).spec.fields for key, env in envs.items()}
    assert fields["QFL/ClientSelection-Tiny-v0"] == ("select",)
    assert fields["QFL/StepSize-Tiny-v0"] == ("lr", "steps")
    assert fields["QFL/RoundTermination-Tiny-v0"] == ("stop",)
    assert fields["QFL/FullControl-Tiny-v0"] == ("select", "lr", "steps", "stop")
    assert TextCodec.from_env(envs["budget"]).spec.max_selected == 2


def test_prompt_layout(envs):
    env = envs["QFL/FullControl-v0"]
    obs, _ = env.reset(seed=3)
    codec = TextCodec.from_env(env)
    prompt = codec.prompt(obs)
    lines = prompt.split("\n")
    n = env.unwrapped.n_clients
    assert lines[-1] == "action:"
    assert lines[2] == "id size skew loss stale lat avail"
    rows = lines[3 : 3 + n]
    assert [r.split()[0] for r in rows] == [str(i) for i in range(n)]
    assert all(len(r.split()) == 7 for r in rows)
    assert "lr " in lines[1] and "acc " in lines[1]
    assert format_number(0.524) == ".52" and format_number(-0.03) == "-.03" and format_number(1.0) == "1"
    relative = TextCodec.from_env(env, CodecConfig(client_scale="relative")).prompt(obs).split("\n")
    cells = np.array([[int(c) for c in r.split()[1:]] for r in relative[3 : 3 + n]])
    assert cells.min() >= 0 and cells.max() <= 9
    losses = env.unwrapped.layout.client(obs, "last_loss")
    if np.ptp(losses) > 0:  # the loss column ranks clients like the raw losses do
        assert cells[np.argmax(losses), 2] == 9 and cells[np.argmin(losses), 2] == 0


def test_v1_prompt_reads_the_cost_and_label_features(envs):
    env = envs["QFL/ClientSelection-Tiny-v1"]
    obs, _ = env.reset(seed=5)
    layout, n = env.unwrapped.layout, env.unwrapped.n_clients
    lines = TextCodec.from_env(env).prompt(obs).split("\n")
    assert lines[2] == "id size skew loss stale lat avail cost shotc noise labels"
    assert lines[1].split()[-2:] == ["spent", format_number(float(layout.global_(obs, "cost_spent")))]
    mixes = set()
    for i, row in enumerate(lines[3 : 3 + n]):
        cells = row.split()
        assert cells[7] == format_number(float(layout.client(obs, "step_time")[i]))
        assert cells[9] == format_number(float(layout.client(obs, "noise_level")[i]))
        fracs = [float(layout.client(obs, f"label_frac_{j}")[i]) for j in range(10)]
        ranked = sorted((j for j in range(10) if fracs[j] >= 0.25), key=lambda j: (-fracs[j], j))
        assert cells[10] == ("".join(map(str, ranked)) or "-")
        mixes.add(cells[10])
    assert len(mixes) > 1  # the column tells the clients apart
    block = layout.clients(obs)  # a view: set client 0's label mix around the 25% share
    block[0, [layout.client_index[f"label_frac_{j}"] for j in range(10)]] = [0.24, 0.26, 0.5, 0, 0, 0, 0, 0, 0, 0]
    assert TextCodec.from_env(env).prompt(obs).split("\n")[3].split()[10] == "21"


def test_client_columns_choose_the_table_and_unknown_features_are_rejected(envs):
    env = envs["QFL/ClientSelection-Tiny-v1"]
    obs, _ = env.reset(seed=5)
    layout, n = env.unwrapped.layout, env.unwrapped.n_clients
    columns = {"noise": "noise_level", "labels": "label_mix"}
    lines = TextCodec.from_env(env, CodecConfig(client_columns=columns)).prompt(obs).split("\n")
    assert lines[2] == "id noise labels"
    for i, row in enumerate(lines[3 : 3 + n]):
        assert row.split()[1] == format_number(float(layout.client(obs, "noise_level")[i]))
    with pytest.raises(ConfigError, match=r"client_columns.*\['nois'\].*allowed: .*noise_level"):
        TextCodec.from_env(env, CodecConfig(client_columns={"noise": "nois"}))
    with pytest.raises(ConfigError, match=r"global_columns.*\['acc'\].*allowed: "):
        TextCodec.from_env(env, CodecConfig(global_columns={"accuracy": "acc"}))


def test_llm_run_configs_pass_client_columns_to_the_codec():
    from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
    from qflgym.agents.llm.train.sft_config import LLMSFTConfig

    columns = {"cost": "step_time"}
    assert LLMSFTConfig(client_columns=columns).codec_config().client_columns == columns
    assert LLMGRPOConfig(client_columns=columns).codec_config().client_columns == columns
    assert LLMSFTConfig().codec_config().client_columns is None


def test_fallbacks_are_documented_and_counted(envs):
    env = envs["QFL/FullControl-Tiny-v0"]
    obs, _ = env.reset(seed=0)
    codec = TextCodec.from_env(env)
    n = codec.spec.n_clients
    avail = env.unwrapped.layout.client(obs, "available") > 0.5
    result = codec.parse("I think client three is best", obs)
    assert not result.valid and len(result.errors) == 4
    d = result.decision
    np.testing.assert_array_equal(d.selected, avail)  # every available client
    assert d.stop is False
    assert d.local_steps == codec._current_steps(obs)
    assert d.lr == pytest.approx(codec._current_lr(obs))
    # partially valid: the valid fields are kept, the bad one falls back
    result = codec.parse(f" select 0 {n + 5} | lr 0.3 | steps 2 | stop yes", obs)
    assert not result.valid and result.errors == ["select: id out of range"]
    assert result.decision.stop is True and result.decision.local_steps == 2
    # lenient syntax is valid but not strict
    result = codec.parse("Select: 1, 0 | LR=0.3 | steps: 2 | stop: no\nmore text", obs)
    assert result.valid and not result.strict
    assert result.decision.selected_ids == tuple(i for i in (0, 1) if avail[i])
    assert result.masked == [i for i in (1, 0) if not avail[i]]  # unavailable ids are dropped, not invalid
    assert codec.stats["completions"] == 3 and codec.stats["invalid"] == 2
    assert codec.invalid_rate == pytest.approx(2 / 3)
    # a budget env truncates to k and counts the violation
    budget = TextCodec.from_env(envs["budget"])
    result = budget.parse(" select 0 1 2 3")
    assert not result.valid and result.decision.selected_ids == (0, 1)
    assert budget.fallback().selected.sum() <= 2


def test_grammar_rejects_out_of_range_and_disorder():
    spec = ActionSpec(
        n_clients=12, select=True, lr=True, steps=True, stop=True, lr_range=(0.01, 1.0), steps_range=(1, 5)
    )
    g = ActionGrammar(spec, lr_digits=3)
    assert g.matches(" select 0 3 11 | lr 0.05 | steps 5 | stop no")
    assert g.matches(" select none | lr 1 | steps 1 | stop yes")
    for bad in (
        " select 3 3 | lr 0.05 | steps 2 | stop no",  # duplicate
        " select 4 3 | lr 0.05 | steps 2 | stop no",  # descending
        " select 12 | lr 0.05 | steps 2 | stop no",  # id out of range
        " select 01 | lr 0.05 | steps 2 | stop no",  # leading zero
        " select 1 | lr 2 | steps 2 | stop no",  # lr out of range
        " select 1 | lr 0.05 | steps 6 | stop no",  # steps out of range
        " select 1 | lr 0.05 | steps 2 | stop maybe",
        " select 1 | lr 0.05 | steps 2",  # missing field
    ):
        assert not g.matches(bad), bad
    # no dead ends: every prefix of a valid string leaves a continuation
    state = g.start()
    for ch in " select 0 3 11 | lr 0.05 | steps 5 | stop no":
        state = g.advance(state, ch)
        assert state is not None
    assert g.accepting(state)


def _accepted(grammar: ActionGrammar, prefix: str = " select ", limit: int = 16) -> set[str]:
    """Every completion the grammar accepts (exhaustive search; asserts that no reachable state is a dead end)."""
    found: set[str] = set()

    def walk(state: frozenset, text: str) -> bool:
        if grammar.accepting(state):
            found.add(text)
            leads = True
        else:
            leads = False
        if len(text) < limit:
            for ch in sorted(grammar.alphabet):
                nxt = grammar.advance(state, ch)
                if nxt is not None:
                    leads = walk(nxt, text + ch) or leads
        assert leads, f"dead end after {text!r}"
        return leads

    start = grammar.advance(grammar.start(), prefix)
    assert start is not None
    walk(start, prefix)
    return found


def test_cohort_size_makes_the_grammar_name_exactly_k_ids():
    from itertools import combinations

    exact = ActionGrammar(ActionSpec(n_clients=7, max_selected=3, min_selected=3))
    expected = {" select " + " ".join(map(str, ids)) for ids in combinations(range(7), 3)}
    assert _accepted(exact) == expected  # no "none", no 2 or 4 ids, and every prefix has a way on (walk asserts)
    budget = ActionGrammar(ActionSpec(n_clients=7, max_selected=3))
    assert _accepted(budget) == {" select none"} | {
        " select " + " ".join(map(str, ids)) for k in (1, 2, 3) for ids in combinations(range(7), k)
    }


def test_cohort_size_reaches_the_codec_and_bad_values_are_named(envs):
    env = envs["QFL/ClientSelection-Tiny-v1"]
    obs, _ = env.reset(seed=0)
    codec = TextCodec.from_env(env, CodecConfig(cohort_size=2))
    assert (codec.spec.min_selected, codec.spec.max_selected) == (2, 2)
    assert "(exactly 2)" in codec.prompt(obs)
    result = codec.parse(" select 1", obs)
    assert not result.valid and result.errors == ["select: 1 ids < cohort size 2"]
    assert codec.parse(" select 0 1", obs).valid
    most = TextCodec.from_env(env).spec.most_selected  # the preset's selection budget
    assert most < codec.spec.n_clients
    with pytest.raises(ConfigError, match=rf"cohort_size must be in \[1, {most}\] \(the env's selection budget\)"):
        TextCodec.from_env(env, CodecConfig(cohort_size=most + 1))
    with pytest.raises(ConfigError, match=r"cohort_size must be in \[1, 2\]"):
        TextCodec.from_env(envs["budget"], CodecConfig(cohort_size=3))
    with pytest.raises(ConfigError, match="cohort_size needs an env that selects clients"):
        TextCodec.from_env(envs["QFL/StepSize-Tiny-v0"], CodecConfig(cohort_size=1))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="cohort_size must be None or an integer >= 1"):
            CodecConfig(cohort_size=bad)
    with pytest.raises(ConfigError, match=r"min_selected must be in \[0, 3\]"):
        ActionSpec(n_clients=7, max_selected=3, min_selected=4)


def test_llm_run_configs_pass_cohort_size_to_the_codec():
    from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
    from qflgym.agents.llm.train.sft_config import LLMSFTConfig

    assert LLMSFTConfig(cohort_size=3).codec_config().cohort_size == 3
    assert LLMGRPOConfig(cohort_size=3).codec_config().cohort_size == 3
    assert LLMSFTConfig().codec_config().cohort_size is None


_keywords = st.sampled_from(["select", "lr", "steps", "stop", "none", "yes", "no", "|", ",", ":", "=", " ", "\n"])
_numbers = st.one_of(
    st.integers(-5, 40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), st.just("1e309")
)
_fragments = st.lists(st.one_of(_keywords, _numbers, st.text(max_size=6)), max_size=25).map(" ".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=120), _fragments))
def test_parser_fuzz_never_crashes_and_yields_valid_actions(envs, text):
    for key in ("QFL/FullControl-Tiny-v0", "QFL/StepSize-Tiny-v0", "budget", "QFL/RoundTermination-Tiny-v0"):
        env = envs[key]
        codec = TextCodec.from_env(env)
        obs = env.observation_space.sample()
        action, result = codec.to_action(text, obs)
        assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype)), (text, action)
        if result.valid:
            assert not result.errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_canonical_text_is_parsed_or_falls_back(envs, data):
    env = envs["QFL/FullControl-Tiny-v0"]
    codec = TextCodec.from_env(env)
    selection = data.draw(st.lists(st.integers(0, 1), min_size=4, max_size=4))
    rest = [data.draw(st.integers(0, 6)), data.draw(st.integers(0, 2)), data.draw(st.integers(0, 1))]
    action = np.asarray([*selection, *rest])
    text = codec.render_action(action)
    i = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=3))
    mutated = text[:i] + junk + text[i:]
    result = codec.parse(mutated)
    encoded = codec.action_codec.encode(result.decision)
    assert env.action_space.contains(np.asarray(encoded, dtype=env.action_space.dtype))
    grammar = ActionGrammar(codec.spec, codec.config.lr_digits)
    if grammar.matches(mutated):
        assert result.valid

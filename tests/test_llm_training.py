"""LLM distillation (SFT), GRPO in the env loop, the CLI and the benchmark harness (tiny model only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.models import load_model
from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
from qflgym.agents.llm.train.grpo_trainer import LLMGRPOTrainer, StateBank, get_env_reward, get_format_reward
from qflgym.agents.llm.train.sft_config import LLMSFTConfig
from qflgym.agents.llm.train.sft_trainer import completion_loss
from qflgym.agents.runtime import make_env

ENV = "QFL/ClientSelection-Tiny-v0"


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One distillation run through the CLI: ``qflgym llm sft`` (loss-greedy teacher, tiny model)."""
    from qflgym.agents.cli.main import main

    out = tmp_path_factory.mktemp("llm")
    status = main(
        [
            "llm", "sft", "--env-id", ENV, "--teacher", "loss-greedy", "--episodes", "3", "--max-steps", "30",
            "--batch-size", "4", "--learning-rate", "5e-3", "--logging-steps", "5", "--out", str(out),
            "--run-name", "sft-test", "--progress", "false", "--torch-threads", "1",
        ]
    )  # fmt: skip
    assert status == 0
    return out / "sft" / "sft-test"


def test_sft_lowers_loss_on_a_fixed_batch(sft_run):
    from qflgym.agents.llm.policy import load_policy

    for name in ("config.yaml", "command.txt", "run.json", "data.jsonl", "metrics.json"):
        assert (sft_run / name).is_file(), name
    config = yaml.safe_load((sft_run / "config.yaml").read_text())
    assert config["teacher"] == "loss-greedy" and config["max_steps"] == 30
    command = (sft_run / "command.txt").read_text()
    assert "qflgym llm sft --env-id QFL/ClientSelection-Tiny-v0" in command and "--max-steps 30" in command
    pairs = [json.loads(line) for line in (sft_run / "data.jsonl").read_text().splitlines()][:8]
    assert all(p["completion"].startswith(" select ") for p in pairs)
    base, tok = load_model("tiny", seed=0)
    env = make_env(ENV)
    tuned = load_policy(sft_run / "policy", env)
    before = completion_loss(base, tok, pairs)
    after = completion_loss(tuned.model, tok, pairs)
    assert after < 0.9 * before, (before, after)
    metrics = json.loads((sft_run / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["s_per_step"] > 0
    assert metrics["losses"][-1] < metrics["losses"][0]
    env.close()


def test_env_reward_is_the_env_reward_of_the_parsed_action():
    env = make_env(ENV)
    reference = make_env(ENV)
    obs, _ = env.reset(seed=3)
    codec = TextCodec.from_env(env)
    bank = StateBank()
    bank.add(env.unwrapped.get_state(), obs, 0)
    decision = codec.parse(" select 0 2").decision
    action = codec.action_codec.encode(decision)

    def env_step_rewards(n_rounds: int, act) -> float:
        reference.reset(seed=0)
        reference.unwrapped.set_state(bank.states[0])
        total = 0.0
        for _ in range(n_rounds):
            _, r, terminated, _, _ = reference.unwrapped.step(act)
            total += float(r)
            if terminated:
                break
        return total

    expected = env_step_rewards(1, action)
    reward = get_env_reward(env, codec, bank)
    assert reward(["p"], [" select 0 2"], state_id=[0]) == [expected]
    assert reward(["p", "p"], [" select 0 2", " select 0 2"], state_id=[0, 0]) == [expected, expected]
    other = reward(["p"], [" select 1 3"], state_id=[0])[0]
    assert other == env_step_rewards(1, codec.action_codec.encode(codec.parse(" select 1 3").decision))
    assert other != expected
    # several rounds ahead: the decision repeated, rewards summed
    two = get_env_reward(env, codec, bank, horizon=2)
    assert two(["p"], [" select 0 2"], state_id=[0]) == [pytest.approx(env_step_rewards(2, action))]
    # invalid output: the fallback's env reward plus a format penalty
    fallback_action = codec.action_codec.encode(codec.fallback(obs))
    assert reward(["p"], ["garbage"], state_id=[0]) == [env_step_rewards(1, fallback_action)]
    fmt = get_format_reward(codec)
    assert fmt(["p", "p"], [" select 0 2", "garbage"]) == [0.0, -1.0]
    env.close()
    reference.close()


def test_grpo_step_runs_and_saves_a_loadable_policy(tmp_path, sft_run):
    cfg = LLMGRPOConfig(
        env_id=ENV,
        init_policy=str(sft_run / "policy"),
        state_policy="random-k",
        episodes=1,
        max_steps=2,
        num_generations=4,
        dtype="bfloat16",  # base weights in bf16, LoRA weights in fp32
        out=str(tmp_path),
        run_name="grpo-test",
        progress=False,
        torch_threads=1,
        logging_steps=1,
    )
    result = LLMGRPOTrainer(cfg, argv=["qflgym", "llm", "grpo"]).train()
    assert result.n_states > 0 and np.isfinite(result.s_per_step)
    assert len(result.rewards) == 2
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert any("rewards/env_reward/mean" in e for e in metrics["log_history"])
    meta = json.loads((result.policy_dir / "qflgym_llm.json").read_text())
    assert meta["trainer"] == "grpo" and meta["model"] == "tiny" and meta["teacher"] == "loss-greedy"
    assert meta["dtype"] == "bfloat16"
    from qflgym.agents.llm.policy import load_policy

    loaded = load_policy(result.policy_dir, make_env(ENV))  # the training dtype, LoRA merged
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    from qflgym.agents.cli.main import main

    assert main(["llm", "eval", "--policy", str(result.policy_dir), "--episodes", "1", "--torch-threads", "1",
                 "--json", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "eval.json").read_text())["summary"]["llm"]
    assert summary["invalid_rate"] == 0.0


def test_llm_policy_runs_inside_bench(tmp_path, sft_run):
    from qflgym.agents.bench import load_suite, run_suite

    suite = {
        "name": "llm-tiny",
        "seeds": [1000],
        "envs": [{"id": ENV, "label": "selection-tiny"}],
        "controllers": [
            {"name": "llm-sft", "controller": "llm", "kwargs": {"path": str(sft_run / "policy")}},
            {"name": "random-k"},
        ],
        "executor": {"kind": "serial"},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = run_suite(load_suite(path), tmp_path / "bench", progress=False)
    rows = pd.read_csv(out.results_csv)
    assert set(rows["controller"]) == {"llm-sft", "random-k"}
    llm = rows[rows["controller"] == "llm-sft"]
    assert (llm["invalid_rate"] == 0.0).all() and (llm["rounds"] > 0).all()
    assert Path(out.results_md).is_file()


def test_cli_errors_are_clear(tmp_path, capsys):
    from qflgym.agents.cli.main import main

    assert main(["llm", "eval", "--policy", str(tmp_path)]) == 2
    assert "not a saved LLM policy" in capsys.readouterr().err
    assert main(["llm", "sft", "--episodes", "0"]) == 2
    assert "episodes must be >= 1" in capsys.readouterr().err
    assert main(["llm", "sft", "--adapter", "qlora", "--out", str(tmp_path)]) == 2
    assert "qlora" in capsys.readouterr().err


def test_configs_validate():
    with pytest.raises(ValueError, match="num_generations"):
        LLMGRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="gamma"):
        LLMGRPOConfig(gamma=0.0)
    with pytest.raises(ValueError, match=r"r must be"):
        LLMSFTConfig(lora_r=0)
    with pytest.raises(ValueError, match=r"dtype must be one of float32, bfloat16, float16, got 'fp8'"):
        LLMSFTConfig(dtype="fp8")
    trl_cfg = LLMSFTConfig().to_trl("/tmp/x")
    assert trl_cfg.use_cpu and not trl_cfg.bf16


def test_teacher_is_evaluated_as_it_was_distilled():
    from qflgym.agents.llm.train.rollout import teacher_options

    meta = {"teacher": "runs/ppo/x", "teacher_kwargs": {"algo": "ppo"}, "teacher_deterministic": False}
    assert teacher_options(meta, "runs/ppo/x") == ({"algo": "ppo"}, False)
    assert teacher_options(meta, "random-k") == ({}, True)
    assert teacher_options({"teacher": "loss-greedy"}, "loss-greedy") == ({}, True)


def test_readme_grpo_example_runs(tmp_path, monkeypatch):
    """The copyable plain-TRL GRPO example of agents/llm/README.md runs as written (tiny model, 2 steps)."""
    readme = (Path(__file__).resolve().parents[1] / "agents" / "llm" / "README.md").read_text()
    block = readme.split("<!-- example: trl-grpo -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "agents/llm/README.md", "exec"), namespace)  # the documented example, as written
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    assert rewards and all(np.isfinite(rewards))
    assert len(namespace["bank"]) == len(namespace["rows"]) >= 2


def test_teacher_episodes_can_be_cut_to_show_more_federations():
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.llm.train.rollout import rollout

    env = make_env("QFL/ClientSelection-Tiny-v1")
    codec = TextCodec.from_env(env)
    teacher = make_controller("cost-aware", env, seed=0, k=2)
    data = rollout(env, teacher, codec, 3, 0, max_steps=2)
    assert [(r["episode"], r["step"]) for r in data.records] == [(e, s) for e in range(3) for s in range(2)]
    assert len({r["prompt"] for r in data.records if r["step"] == 0}) == 3  # three federations
    with pytest.raises(ValueError, match="episode_steps"):
        LLMSFTConfig(episode_steps=0)


RUN_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs/llm").glob("[sg][fr]*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_llm_run_configs_are_valid(path):
    kind = LLMSFTConfig if path.name.startswith("sft_") else LLMGRPOConfig
    cfg = kind(**yaml.safe_load(path.read_text()))
    assert cfg.env_id.startswith("QFL/")


def test_dagger_rollout_follows_the_actor_and_records_the_teachers_labels():
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.llm.train.rollout import rollout

    env = make_env("QFL/ClientSelection-Tiny-v1")
    codec = TextCodec.from_env(env)

    def teacher():
        return make_controller("cost-aware", env, seed=0, k=2)

    def actor():
        return make_controller("random-k", env, seed=3, k=1)

    dagger = rollout(env, teacher(), codec, 2, 5, keep_observations=True, actor=actor())
    own = rollout(env, actor(), codec, 2, 5, keep_observations=True)
    assert len(dagger.observations) == len(own.observations)
    assert all(np.array_equal(a, b) for a, b in zip(dagger.observations, own.observations, strict=True))
    assert dagger.returns == own.returns  # the actor's episodes, rewards and returns
    labels, label = [], teacher()
    for rec, obs in zip(dagger.records, dagger.observations, strict=True):
        action, _ = label.predict(obs, episode_start=np.array([rec["step"] == 0]), deterministic=True)
        labels.append(codec.render_action(action))
    assert [r["completion"] for r in dagger.records] == labels  # the teacher's decision in each visited state
    assert labels != [r["completion"] for r in own.records]

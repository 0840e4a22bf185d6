"""The ``qflgym`` command line: user errors, eval/list output, the plugin hook for command groups."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from qflgym.agents.cli.commands import COMMANDS, USER_ERRORS, Command
from qflgym.agents.cli.main import SINGLE_THREAD_ENV, build_parser, limit_native_threads, main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "bench", "demo", "list"):
        assert name in out


def test_thread_variables_default_to_one_and_respect_the_user():
    environ = {"OMP_NUM_THREADS": "4"}
    limit_native_threads(environ)
    assert environ == {"OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert set(SINGLE_THREAD_ENV) == {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}


def test_the_cli_module_imports_no_numerics_so_main_can_set_threads_first():
    # BLAS/OpenMP read the thread variables when loaded: main() sets them, so importing the entry module
    # (what the console script does before calling main) must not load numpy or torch.
    code = "import sys, qflgym.agents.cli.main; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_algorithm(capsys):
    code, _, err = run(capsys, "train", "--algo", "nope", "--env", "QFL/ClientSelection-Tiny-v0")
    assert code == 2
    assert "unknown algorithm 'nope'; allowed: a2c, dqn, maskable-ppo, ppo, sac, td3" in err


def test_unknown_env(capsys):
    code, _, err = run(capsys, "train", "--algo", "ppo", "--env", "QFL/Nope-v0", "--out", "/nonexistent")
    assert code == 2 and "unknown env id 'QFL/Nope-v0'" in err and "QFL/ClientSelection-v0" in err
    assert "did you mean" not in err


def test_unknown_env_suggests_the_closest_ids(capsys):
    code, _, err = run(capsys, "eval", "--controller", "random-k", "--env", "QFL/ClientSelecton-v0")
    assert code == 2 and "(did you mean QFL/ClientSelection-v0" in err
    assert len(err.strip().splitlines()) == 1


def test_only_real_user_errors_are_one_line_errors(capsys):
    assert not set(USER_ERRORS) & {TypeError, KeyError, ValueError, AttributeError}
    code, _, err = run(capsys, "eval", "--controller", "nope", "--env", "QFL/ClientSelection-Tiny-v0")
    assert code == 2 and err.startswith("qflgym eval: error: unknown controller 'nope'; allowed: ")

    def buggy(args: argparse.Namespace) -> int:
        raise TypeError("a bug")

    COMMANDS.add("buggy", Command("buggy", "raises a bug", lambda p: None, buggy), overwrite=True)
    try:
        with pytest.raises(TypeError, match="a bug"):  # a bug keeps its traceback
            main(["buggy"])
    finally:
        COMMANDS._entries.pop("buggy")


def test_a_bad_set_override_blames_the_set_value(capsys, tmp_path):
    argv = ["train", "--algo", "ppo", "--env", "QFL/ClientSelection-Tiny-v0", "--out", str(tmp_path)]
    code, _, err = run(capsys, *argv, "--set", "n_step=64")
    assert code == 2
    assert "--set n_step=64: unknown hyperparameter 'n_step' for PPO (did you mean 'n_steps'?)" in err
    assert "ppo.yml" not in err


def test_llm_help_is_plain_text(capsys):
    for argv in (["llm", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "llm" in out
        assert not re.search(r"``|:(class|mod|func|data):", out), out


def test_list_does_not_import_the_llm_stack():
    code = (
        "import sys; from qflgym.agents.cli.main import main; main(['list']); "
        "print(sorted(m for m in ('transformers', 'trl', 'peft', 'datasets', 'accelerate', "
        "'sentence_transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_unsupported_action_space(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--algo", "dqn", "--env", "QFL/ClientSelection-Tiny-v0", "--out", str(tmp_path))
    assert code == 2 and "algorithms that do: a2c, maskable-ppo, ppo" in err


def test_missing_files(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        "--algo",
        "ppo",
        "--env",
        "QFL/ClientSelection-Tiny-v0",
        "--hyperparams",
        str(tmp_path / "nope.yml"),
    )
    assert code == 2 and "hyperparameter file not found" in err
    code, _, err = run(capsys, "bench", str(tmp_path / "suite.yaml"))
    assert code == 2 and "bench suite not found" in err
    code, _, err = run(capsys, "bench", "no_such_suite")
    assert code == 2 and "tiny" in err  # lists the packaged suites
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "model.zip"), "--env", "QFL/ClientSelection-Tiny-v0")
    assert code == 2 and "model file not found" in err


def test_bad_config_values(capsys):
    code, _, err = run(capsys, "train", "--algo", "ppo", "--env", "QFL/ClientSelection-Tiny-v0", "--n-envs", "0")
    assert code == 2 and "n_envs" in err
    code, _, err = run(
        capsys,
        "eval",
        "--controller",
        "random-k",
        "--kwargs",
        "{q: 1}",
        "--env",
        "QFL/ClientSelection-Tiny-v0",
        "--episodes",
        "1",
    )
    assert code == 2 and "allowed: k" in err


def test_eval_prints_a_table_of_finite_numbers(capsys, tmp_path):
    rows_path = tmp_path / "rows.json"
    argv = ["eval", "--controller", "power-of-choice", "--env", "QFL/ClientSelection-Tiny-v0"]
    code, out, _ = run(capsys, *argv, "--episodes", "2", "--seed", "5", "--json", str(rows_path))
    assert code == 0
    for header in ("return", "final acc", "rounds", "MB up", "mean"):
        assert header in out
    rows = json.loads(rows_path.read_text())
    assert [r["seed"] for r in rows] == [5, 6]
    for r in rows:
        assert math.isfinite(r["return"]) and 0.0 < r["final_accuracy"] <= 1.0
        assert r["rounds"] >= 1 and r["total_bytes_uploaded"] > 0
    mean_row = next(line for line in out.splitlines() if "mean" in line)
    cells = [c.strip() for c in re.split(r"[│|]", mean_row) if c.strip()]
    mean_return = sum(r["return"] for r in rows) / len(rows)
    assert cells[1] == f"{mean_return:.3f}"  # the printed mean is the rows' mean, not a dash for NaN
    assert all(re.fullmatch(r"[-+]?\d+(\.\d+)?", c) for c in cells[1:4])


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for item in (
        "controllers:",
        "power-of-choice",
        "algorithms:",
        "maskable-ppo",
        "envs:",
        "QFL/FullControl-v0",
        "suites:",
        "tiny",
    ):
        assert item in out


def test_plugin_command_groups_register_through_the_registry(capsys):
    calls = []

    def configure(parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="toy_command", required=True)
        hello = sub.add_parser("hello")
        hello.add_argument("--name", default="world")
        hello.set_defaults(run=lambda args: calls.append(args.name) or 0)

    COMMANDS.add("toy", Command("toy", "a plugin group", configure), overwrite=True)
    try:
        assert "toy" in build_parser().format_help()
        code, _, _ = run(capsys, "toy", "hello", "--name", "qfl")
        assert code == 0 and calls == ["qfl"]
    finally:
        COMMANDS._entries.pop("toy")


def test_demo_defaults_to_the_demo_env(monkeypatch):
    import qflgym.agents.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.update(kwargs))
    assert main(["demo", "--quick"]) == 0
    assert "env_id" not in seen  # run_demo's own default, demo.DEMO_ENV
    assert demo.DEMO_ENV == "QFL/ClientSelection-v1"


def test_demo_pipeline_on_the_tiny_preset(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "demo",
        "--quick",
        "--env",
        "QFL/ClientSelection-Tiny-v1",
        "--timesteps",
        "64",
        "--seeds",
        "1",
        "--n-envs",
        "1",
        "--executor",
        "serial",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    assert code == 0
    assert (tmp_path / "ppo" / "train" / "model.zip").is_file()
    bench = tmp_path / "bench"
    assert (bench / "results.md").is_file() and (bench / "results.csv").is_file()
    assert sorted(p.name.split("__")[1] for p in (bench / "plots").glob("*.png")) == [
        "accuracy_vs_bytes.png",
        "accuracy_vs_round.png",
        "objective.png",
    ]
    assert "| clone |" in out and "| cost-aware |" in out and str(bench / "results.md") in out


def _train(capsys, tmp_path, run_name: str, *argv: str):
    """``qflgym train --algo ppo`` with ``argv``, quiet and without checkpoints, into ``tmp_path/ppo/run_name``."""
    quiet = ("--save-freq", "0", "--no-progress", "--no-tensorboard")
    return run(capsys, "train", "--algo", "ppo", *argv, *quiet, "--out", str(tmp_path), "--run-name", run_name)


def test_train_steps_batched_envs(capsys, tmp_path):
    code, _, _ = _train(
        capsys,
        tmp_path,
        "batched",
        *("--env", "QFL/ClientSelection-Tiny-v1", "--vec-env", "batched", "--n-envs", "2", "--timesteps", "32"),
        *("--set", "n_steps=16", "batch_size=16", "policy_kwargs=dict(net_arch=[16])", "--eval-freq", "0"),
    )
    assert code == 0
    config = yaml.safe_load((tmp_path / "ppo" / "batched" / "config.yaml").read_text())
    assert config["vec_env"] == "batched" and config["n_envs"] == 2


def test_train_writes_a_run_directory(capsys, tmp_path):
    code, out, _ = _train(
        capsys,
        tmp_path,
        "cli",
        *("--env", "QFL/ClientSelection-Tiny-v0", "--timesteps", "64", "--env-config", "{federation_seed: 0}"),
        *("--set", "n_steps=32", "batch_size=16", "policy_kwargs=dict(net_arch=[16])"),
        *("--eval-freq", "32", "--eval-episodes", "1"),
    )
    assert code == 0
    run_dir = tmp_path / "ppo" / "cli"
    assert f"run directory: {run_dir}" in out
    assert f"best model:    {run_dir / 'best_model.zip'}" in out
    assert (run_dir / "model.zip").is_file()
    assert "--set n_steps=32" in (run_dir / "command.txt").read_text()
    code, out, _ = run(
        capsys,
        "eval",
        "--model",
        str(run_dir),
        "--env",
        "QFL/ClientSelection-Tiny-v0",
        "--env-config",
        "{federation_seed: 0}",
        "--episodes",
        "1",
    )
    assert code == 0 and "mean" in out

"""The ``qflgym`` command line: user errors, eval/list output, the plugin hook for command groups."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from qflgym.agents.cli import COMMANDS, SINGLE_THREAD_ENV, Command, build_parser, limit_native_threads, main


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
    code = "import sys, qflgym.agents.cli; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_algorithm(capsys):
    code, _, err = run(capsys, "train", "--algo", "nope", "--env", "QFL/ClientSelection-Tiny-v0")
    assert code == 2
    assert "unknown algorithm 'nope'; allowed: a2c, dqn, maskable-ppo, ppo, sac, td3" in err


def test_unknown_env(capsys):
    code, _, err = run(capsys, "train", "--algo", "ppo", "--env", "QFL/Nope-v0", "--out", "/nonexistent")
    assert code == 2 and "unknown env id 'QFL/Nope-v0'" in err and "QFL/ClientSelection-v0" in err


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


def test_eval_prints_a_table(capsys):
    code, out, _ = run(
        capsys,
        "eval",
        "--controller",
        "power-of-choice",
        "--env",
        "QFL/ClientSelection-Tiny-v0",
        "--episodes",
        "2",
        "--seed",
        "5",
    )
    assert code == 0
    for header in ("return", "final acc", "rounds", "MB up", "mean"):
        assert header in out


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


def test_demo_pipeline_on_the_tiny_preset(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "demo",
        "--quick",
        "--env",
        "QFL/ClientSelection-Tiny-v0",
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
    assert len(list((bench / "plots").glob("*.png"))) == 2
    assert "| ppo |" in out and "| ppo (mode) |" in out and str(bench / "results.md") in out


def test_train_writes_a_run_directory(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "train",
        "--algo",
        "ppo",
        "--env",
        "QFL/ClientSelection-Tiny-v0",
        "--timesteps",
        "64",
        "--env-config",
        "{federation_seed: 0}",
        "--set",
        "n_steps=32",
        "batch_size=16",
        "policy_kwargs=dict(net_arch=[16])",
        "--eval-freq",
        "0",
        "--save-freq",
        "0",
        "--no-progress",
        "--no-tensorboard",
        "--out",
        str(tmp_path),
        "--run-name",
        "cli",
    )
    assert code == 0
    run_dir = tmp_path / "ppo" / "cli"
    assert f"run directory: {run_dir}" in out
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

"""The benchmark harness: suites, results files, summaries, plots, the Ray executor."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import qflgym.envs  # noqa: F401
from qflgym.agents.bench import RESULT_COLUMNS, BenchSuite, load_suite, run_suite
from qflgym.agents.bench.report import summarize
from qflgym.agents.cli.args import suite_path
from qflgym.agents.evaluation.stats import mean_ci
from qflgym.config import ConfigError, build_config

PNG = b"\x89PNG\r\n\x1a\n"


def tiny(**changes):
    suite = load_suite(suite_path("tiny"))
    return suite.model_copy(update=changes) if changes else suite


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_suite(tiny(), out, executor="serial", progress=False, argv=["qflgym", "bench", "tiny"])


def test_tiny_suite_writes_results_with_expected_columns(tiny_run):
    df = pd.read_csv(tiny_run.results_csv)
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    # 4 controllers on 2 envs + 1 restricted to one env, 2 seeds, 1 episode each
    assert len(df) == (4 * 2 + 1) * 2
    assert set(df["controller"]) == {"random-k", "all-clients", "power-of-choice", "oort", "decay+patience"}
    assert set(df.loc[df["controller"] == "decay+patience", "env"]) == {"full-tiny"}
    assert df["final_accuracy"].between(0, 1).all() and (df["rounds"] >= 1).all()
    reached = df["reached"] == 1
    assert (df.loc[reached, "rounds_to_target"] <= df.loc[reached, "rounds"]).all()
    assert df.loc[~reached, "rounds_to_target"].isna().all()
    curves = pd.read_csv(tiny_run.curves_csv)
    assert {"round", "accuracy", "bytes_uploaded", "wall_time_s", "shots"} <= set(curves.columns)
    assert (
        curves.groupby(["controller", "env", "seed"])["bytes_uploaded"].apply(lambda s: s.is_monotonic_increasing)
    ).all()


def test_tiny_suite_writes_markdown_plots_and_provenance(tiny_run):
    md = tiny_run.results_md.read_text()
    assert "## selection-tiny" in md and "## full-tiny" in md and "±" in md
    names = sorted(p.name for p in tiny_run.plots)
    assert names == sorted(
        f"{e}__{x}.png"
        for e in ("selection-tiny", "full-tiny")
        for x in ("accuracy_vs_round", "accuracy_vs_bytes", "objective")
    )
    for p in tiny_run.plots:
        assert p.read_bytes()[:8] == PNG
    assert load_suite(tiny_run.out_dir / "config.yaml").name == "tiny"  # the resolved suite runs again as it is
    assert (tiny_run.out_dir / "command.txt").read_text().strip() == "qflgym bench tiny"
    record = json.loads((tiny_run.out_dir / "run.json").read_text())
    assert record["executor"] == {"kind": "serial"} and "numpy" in record["versions"]


def test_serial_runs_are_reproducible(tiny_run, tmp_path):
    suite = tiny(controllers=tiny().controllers[:1], envs=tiny().envs[:1])
    again = run_suite(suite, tmp_path, executor="serial", progress=False)
    a = pd.read_csv(tiny_run.results_csv)
    a = a[(a["controller"] == "random-k") & (a["env"] == "selection-tiny")].reset_index(drop=True)
    b = pd.read_csv(again.results_csv)
    cols = ["seed", "return", "rounds", "final_accuracy", "total_bytes_uploaded"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_summary_mean_and_ci():
    rows = [
        {
            "env": "e",
            "controller": "c",
            "reached": 1.0,
            "rounds_to_target": r,
            "budget": 10,
            **{
                k: float(r)
                for k in (
                    "objective",
                    "return",
                    "final_accuracy",
                    "best_accuracy",
                    "bytes_to_target",
                    "wall_time_to_target",
                    "shots_to_target",
                )
            },
        }
        for r in (2.0, 4.0, 6.0)
    ]
    rows.append({**rows[0], "reached": 0.0, "rounds_to_target": np.nan})
    s = summarize(rows).iloc[0]
    assert s["episodes"] == 4 and s["reached"] == 3
    assert s["rounds_to_target"] == pytest.approx(4.0)  # over reached episodes
    assert s["rounds_to_target_censored"] == pytest.approx((2 + 4 + 6 + 10) / 4)  # unreached at budget
    mean, half = mean_ci(np.array([2.0, 4.0, 6.0]))
    assert mean == pytest.approx(4.0) and half == pytest.approx(4.303 * 2 / np.sqrt(3), rel=1e-3)


def test_suite_validation_names_fields_and_allowed_values(tmp_path):
    base = {
        "name": "x",
        "seeds": [1],
        "envs": [{"id": "QFL/ClientSelection-Tiny-v0"}],
        "controllers": [{"name": "random-k"}],
    }
    build_config(BenchSuite, base, "suite")
    with pytest.raises(ConfigError, match=r"unknown controller 'nope'; allowed: .*oort"):
        build_config(BenchSuite, {**base, "controllers": [{"name": "nope"}]}, "suite")
    with pytest.raises(ConfigError, match=r"unknown env id 'QFL/Nope-v0'; registered qflgym envs: .*QFL/"):
        build_config(BenchSuite, {**base, "envs": [{"id": "QFL/Nope-v0"}]}, "suite")
    with pytest.raises(ConfigError, match="repeated: random-k"):
        build_config(BenchSuite, {**base, "controllers": [{"name": "random-k"}] * 2}, "suite")
    with pytest.raises(ConfigError, match=r"executor\.kind"):
        build_config(BenchSuite, {**base, "executor": {"kind": "pool"}}, "suite")
    with pytest.raises(ConfigError, match="seeds"):
        build_config(BenchSuite, {**base, "seeds": []}, "suite")
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path / "missing.yaml")


def test_load_suite_keeps_only_the_selected_envs(tmp_path):
    suite = load_suite(suite_path("tiny"), envs=["selection-tiny"])
    assert [e.name for e in suite.envs] == ["selection-tiny"]
    assert [c.name for c in suite.controllers] == ["random-k", "all-clients", "power-of-choice", "oort"]
    by_id = load_suite(suite_path("tiny"), envs=["QFL/FullControl-Tiny-v0"])
    assert [e.name for e in by_id.envs] == ["full-tiny"] and by_id.controllers[-1].envs == ["full-tiny"]
    # controllers restricted to dropped envs are dropped before validation: their models need not exist
    path = tmp_path / "suite.yaml"
    path.write_text(
        "name: x\nseeds: [1]\n"
        "envs: [{id: QFL/ClientSelection-Tiny-v0, label: a}, {id: QFL/FullControl-Tiny-v0, label: b}]\n"
        "controllers: [{name: random-k}, {name: ppo, controller: sb3, kwargs: {path: /nonexistent}, envs: [b]}]\n"
    )
    assert [c.name for c in load_suite(path, envs=["a"]).controllers] == ["random-k"]
    with pytest.raises(ValueError, match="has no env c; allowed: "):
        load_suite(path, envs=["c"])


def test_ray_executor_matches_serial(tiny_run, tmp_path):
    pytest.importorskip("ray")
    suite = tiny(controllers=tiny().controllers[:1], envs=tiny().envs[:1], seeds=[1000])
    out = run_suite(suite, tmp_path, executor="ray", num_cpus=1, progress=False)
    a = pd.read_csv(tiny_run.results_csv)
    a = a[(a["controller"] == "random-k") & (a["env"] == "selection-tiny") & (a["seed"] == 1000)]
    a = a.reset_index(drop=True)
    b = pd.read_csv(out.results_csv)
    cols = ["seed", "return", "rounds", "final_accuracy"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_paired_rounds_reduction_against_the_baseline():
    def row(controller, seed, rounds):
        return {
            "env": "e",
            "controller": controller,
            "seed": seed,
            "episode": 0,
            "budget": 20,
            "reached": float(rounds == rounds),
            "rounds_to_target": rounds,
            **{
                k: 1.0
                for k in (
                    "objective",
                    "return",
                    "final_accuracy",
                    "best_accuracy",
                    "bytes_to_target",
                    "wall_time_to_target",
                    "shots_to_target",
                )
            },
        }

    rows = [row("random-k", 1, 10.0), row("random-k", 2, 20.0), row("smart", 1, 5.0), row("smart", 2, np.nan)]
    s = summarize(rows, baseline="random-k").set_index("controller")
    assert s.loc["random-k", "rounds_reduction"] == pytest.approx(0.0)
    # seed 1: 1 - 5/10 = 0.5; seed 2: unreached -> budget 20: 1 - 20/20 = 0
    assert s.loc["smart", "rounds_reduction"] == pytest.approx(0.25)
    assert np.isnan(summarize(rows).set_index("controller").loc["smart", "rounds_reduction"])


def test_a_refused_ray_cluster_is_one_line_naming_the_token_fix(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from qflgym.agents.bench.executors import ClusterConnectionError, executor_record, run_ray
    from qflgym.agents.cli.main import main

    def refuse(*args, **kwargs):
        raise ConnectionError("Could not connect to the GCS at 10.0.0.1:6379 after 57 s\nmore lines")

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(ray, "init", refuse)
    assert executor_record("ray") == {"kind": "ray", "ray_address": "10.0.0.1:6379"}
    with pytest.raises(ClusterConnectionError, match=r"RAY_ADDRESS=10.0.0.1:6379 .*RAY_AUTH_MODE=token"):
        run_ray([], progress=False)
    code = main(["bench", "tiny", "--executor", "ray", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "RAY_AUTH_MODE" in err and "ray get-auth-token" in err and "Traceback" not in err
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["executor"] == {"kind": "ray", "ray_address": "10.0.0.1:6379"}


def test_summary_pairs_the_objective_with_the_baseline_and_prints_na_for_one_episode():
    rows = [
        {
            "env": "e",
            "controller": name,
            "seed": seed,
            "episode": 0,
            "reached": 1.0,
            "rounds_to_target": 5.0,
            "budget": 10,
            "objective": value,
            **{
                k: 1.0
                for k in (
                    "return",
                    "final_accuracy",
                    "best_accuracy",
                    "bytes_to_target",
                    "wall_time_to_target",
                    "shots_to_target",
                )
            },
        }
        for name, values in (("base", (10.0, 20.0, 40.0)), ("new", (5.0, 10.0, 30.0)))
        for seed, value in enumerate(values)
    ]
    summary = summarize(rows, baseline="base").set_index("controller")
    assert summary.loc["new", "objective_saving"] == pytest.approx(np.mean([0.5, 0.5, 0.25]))
    assert summary.loc["new", "objective_saving_low"] <= summary.loc["new", "objective_saving"]
    single = summarize(rows[:1]).iloc[0]
    assert np.isnan(single["objective_ci95"])  # one episode: no interval, printed as n/a


def test_accuracy_curves_average_the_running_episodes_and_end_at_the_median_length():
    from qflgym.agents.bench.plots import _episode_matrix, _running_mean_ci

    lengths, acc = (1, 2, 4), {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}
    curves = pd.DataFrame(
        [
            {"seed": s, "episode": 0, "round": r, "accuracy": acc[r] + s / 100}
            for s, n in enumerate(lengths)
            for r in range(n + 1)
        ]
    )
    grid = np.arange(5)
    mat = _episode_matrix(curves, "round", grid, "accuracy")
    assert np.isnan(mat[0, 2:]).all() and np.isnan(mat[1, 3:]).all() and not np.isnan(mat[2]).any()
    mean, _, shown = _running_mean_ci(mat)
    assert shown.tolist() == [True, True, True, False, False]  # 1 of 3 episodes still runs at round 3
    assert mean[2] == pytest.approx((0.31 + 0.32) / 2)  # round 2: the two running episodes, not a carried 0.2
    assert np.isnan(mean[3:]).all()

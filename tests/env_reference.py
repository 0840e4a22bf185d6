"""The hand-computed reference of tests/test_envs_numbers.py: every feature and reward term from the reports."""

from __future__ import annotations

import math
import operator

import gymnasium as gym
import numpy as np
import pytest

import qflgym.envs  # noqa: F401  (registers the ids)
from qflgym.envs import ControlDecision
from qflgym.envs.observation import (
    CLIENT_FEATURE_BOUNDS,
    GLOBAL_FEATURE_BOUNDS,
    LABEL_FEATURES,
)
from qflgym.envs.rewards import BUILTIN_TERMS
from qflgym.qfl_core.federation import ClientReport

#: The reference scales of the reward context, reported by custom terms so that they are checked by hand too.
SCALES = ("bytes_scale", "time_scale", "shots_scale")
SCALE_TERMS = {name: operator.attrgetter(name) for name in SCALES}
#: Distinct non-zero weights, so that every term moves the reward.
WEIGHTS = {name: 0.1 * (i + 1) * (-1) ** i for i, name in enumerate((*BUILTIN_TERMS, "cost", *SCALES))}


class Reference:
    """The observation and reward terms of an episode, computed by hand from the federation's reports."""

    def __init__(self, env: gym.Env, info: dict) -> None:
        u = env.unwrapped
        self.u = u
        fed = u.federation
        cfg = u.config
        n = u.n_clients
        self.budget = cfg.round_budget
        self.target = cfg.target_accuracy
        self.ln_k = math.log(fed.n_classes)
        self.base_lr = cfg.federation.training.lr
        self.max_steps = cfg.local_steps_range[1]
        self.acc, self.loss = info["val_accuracy"], info["val_loss"]
        self.prev_acc, self.prev_loss = self.acc, self.loss
        self.lr, self.steps = self.base_lr * cfg.lr_multiplier, cfg.fixed_local_steps
        self.rounds = 0
        self.reached = False
        self.totals = {"bytes": 0.0, "time": 0.0, "shots": 0.0, "cost": 0.0}
        self.shot_price, self.cost_scale, self.cost_budget = cfg.shot_price, cfg.cost_scale, cfg.cost_budget
        self.cost_reference = cfg.cost_budget or self.budget * cfg.cost_scale  # documented for cost_spent
        self.last_loss = np.ones(n)
        self.last_selected = np.zeros(n)
        self.times_selected = np.zeros(n)
        self.update_norm = np.zeros(n)
        self.cosine = np.zeros(n)
        self.available = np.asarray(fed.available, dtype=float)  # drawn by the federation at its start
        # A round in which every client trains for the fixed local steps (see qfl_core/clients.py).
        sizes = np.array([s.size for s in fed.client_stats], dtype=float)
        shots = np.array([p.shots or 0 for p in fed.profiles], dtype=float)
        latency = np.array([p.latency_s for p in fed.profiles])
        self.shots, self.latency = shots, latency
        self.step_executions = np.minimum(sizes, cfg.federation.training.batch_size) * (
            1 + 2 * fed.spec.n_circuit_params
        )
        executions = self.step_executions * cfg.fixed_local_steps
        self.full = {
            "bytes": 2 * n * fed.param_bytes,
            "time": cfg.federation.server_time_s + (executions * latency).max(),
            "shots": max((executions * shots).sum(), 1.0),
        }
        self.norm_scale = cfg.federation.training.lr * cfg.federation.training.local_steps
        hist = np.array([s.label_histogram for s in fed.client_stats], dtype=float)
        fractions = hist / hist.sum(axis=1, keepdims=True)
        overall = hist.sum(axis=0) / hist.sum()
        depol = np.array([p.depolarizing for p in fed.profiles])
        readout = np.array([p.readout_error for p in fed.profiles])
        self.static = {
            "data_size": sizes / sizes.max(),
            "label_skew": 0.5 * np.abs(fractions - overall).sum(axis=1),
            "noise_level": 1 - (1 - 4 * depol / 3) ** cfg.federation.circuit.n_layers * (1 - 2 * readout),
            "shot_noise": np.array([1 / math.sqrt(s) if s else 0.0 for s in shots]),
            "latency": latency / latency.max(),
        }
        for j, name in enumerate(LABEL_FEATURES):
            self.static[name] = fractions[:, j] if j < fed.n_classes else np.zeros(n)
        # v1: one local step's seconds and priced shots, in units of cost_scale
        self.static["step_time"] = self.step_executions * latency / cfg.cost_scale
        self.static["step_shot_cost"] = cfg.shot_price * self.step_executions * shots / cfg.cost_scale
        self.mixed_devices = bool((readout > 0).any() and (depol > 0).any() and (shots > 0).any())
        self.mixed_devices = self.mixed_devices and bool((shots == 0).any())

    def step(self, stopped: bool) -> dict[str, float]:
        """Book the last step (from the env's last report) and return the reward terms by hand."""
        report = None if stopped else self.u.last_report
        step_acc, step_loss = self.acc, self.loss  # before this step
        if report is not None:
            self.prev_acc, self.prev_loss = self.acc, self.loss  # the observation's changes are per round
            self.rounds += 1
            for i in report.selected:
                self.last_selected[i] = self.rounds
                self.times_selected[i] += 1
            for c in report.clients:
                self.check_client_costs(c, report.local_steps)
                self.last_loss[c.client_id] = c.loss_before / self.ln_k
                self.update_norm[c.client_id] = math.tanh(c.update_norm / self.norm_scale)
                self.cosine[c.client_id] = c.update_cosine
            self.acc, self.loss = report.val_accuracy, report.val_loss
            self.lr, self.steps = report.lr, report.local_steps
            self.available = np.asarray(self.u.federation.available, dtype=float)
        costs = {
            "bytes": 0.0 if report is None else report.bytes_uploaded + report.bytes_downloaded,
            "time": 0.0 if report is None else report.wall_time_s,
            "shots": 0.0 if report is None else report.shots_used,
        }
        costs["cost"] = costs["time"] + self.shot_price * costs["shots"]
        self.cost = costs["cost"]
        for key, value in costs.items():
            self.totals[key] += value
        reached_now = self.target is not None and not self.reached and self.acc >= self.target
        self.reached = self.reached or reached_now
        missing = 0.0 if self.target is None else max(0.0, self.target - self.acc)
        return {
            "accuracy_gain": self.acc - step_acc,
            "loss_drop": (step_loss - self.loss) / self.ln_k,
            "communication_cost": costs["bytes"] / self.full["bytes"],
            "wall_time_cost": costs["time"] / self.full["time"],
            "shot_cost": costs["shots"] / self.full["shots"],
            "round_cost": 0.0 if report is None else 1.0,
            "target_bonus": float(reached_now),
            "stop_accuracy": self.acc if stopped else 0.0,
            "early_stop_penalty": missing if stopped else 0.0,
            "cost": costs["cost"] / self.cost_scale,
            "bytes_scale": self.full["bytes"],
            "time_scale": self.full["time"],
            "shots_scale": self.full["shots"],
        }

    def check_client_costs(self, client: ClientReport, local_steps: int) -> None:
        """A trained client's executions, shots and seconds: its minibatch steps x one step's (qfl_core's model)."""
        i = client.client_id
        executions = self.step_executions[i] * local_steps
        assert client.circuit_executions == executions
        assert client.shots_used == executions * self.shots[i]
        assert client.wall_time_s == pytest.approx(executions * self.latency[i], rel=1e-12)

    @property
    def over_cost_budget(self) -> bool:
        """The cost spent has reached the cost budget."""
        return self.cost_budget is not None and self.totals["cost"] >= self.cost_budget

    def client_features(self) -> dict[str, np.ndarray]:
        """Every client feature by name, clipped to its bounds."""
        features = dict(self.static)
        features["last_loss"] = self.last_loss
        features["rounds_since_selected"] = (self.rounds - self.last_selected) / self.budget
        features["times_selected"] = self.times_selected / self.budget
        features["available"] = self.available
        features["last_update_norm"] = self.update_norm
        features["update_cosine"] = self.cosine
        return {name: np.clip(features[name], *CLIENT_FEATURE_BOUNDS[name]) for name in self.u.layout.client_features}

    def global_features(self) -> dict[str, float]:
        """Every global feature by name, clipped to its bounds."""
        features = {
            "round_fraction": self.rounds / self.budget,
            "val_accuracy": self.acc,
            "val_loss": self.loss / self.ln_k,
            "val_accuracy_change": self.acc - self.prev_acc,
            "val_loss_change": (self.loss - self.prev_loss) / self.ln_k,
            "cumulative_bytes": self.totals["bytes"] / (self.budget * self.full["bytes"]),
            "cumulative_wall_time": self.totals["time"] / (self.budget * self.full["time"]),
            "cumulative_shots": self.totals["shots"] / (self.budget * self.full["shots"]),
            "learning_rate": math.log10(self.lr / self.base_lr),
            "local_steps": self.steps / self.max_steps,
            "available_fraction": self.available.mean(),
            "target_gap": 0.0 if self.target is None else self.target - self.acc,
            "cost_spent": self.totals["cost"] / self.cost_reference,
        }
        bounds = GLOBAL_FEATURE_BOUNDS
        return {name: float(np.clip(features[name], *bounds[name])) for name in self.u.layout.global_features}

    def check_info(self, info: dict, terminated: bool) -> None:
        """The step's ``info``: the round's counts and costs, the running totals, the flags."""
        report = self.u.last_report
        groups = () if report is None else (report.selected, report.participants, report.dropped)
        counts = tuple(map(len, groups)) or (0, 0, 0)
        expected = {
            "round": self.rounds,
            "val_accuracy": self.acc,
            "val_loss": self.loss,
            "selected": counts[0],
            "participants": counts[1],
            "dropped": counts[2],
            "lr": self.lr,
            "local_steps": self.steps,
            "bytes": 0 if report is None else report.bytes_uploaded + report.bytes_downloaded,
            "wall_time_s": 0.0 if report is None else report.wall_time_s,
            "shots": 0 if report is None else report.shots_used,
            "total_bytes": self.totals["bytes"],
            "total_wall_time_s": self.totals["time"],
            "total_shots": self.totals["shots"],
            "cost": self.cost,
            "total_cost": self.totals["cost"],
            "objective": self.objective(),
            "stopped": report is None,
            "target_reached": self.reached,
        }
        assert {k: info[k] for k in expected} == pytest.approx(expected, rel=1e-12)
        assert info["test_accuracy"] is None  # evaluate_test is off in the tiny preset
        assert not terminated or info["stopped"] or info["target_reached"]

    def objective(self) -> float:
        """``info["objective"]`` by its documented definition (the tiny presets evaluate no test split)."""
        cfg = self.u.config
        if cfg.objective == "rounds_to_target":
            return float(self.rounds if self.reached else self.budget)
        if cfg.objective == "cost_to_target":
            return self.totals["cost"] if self.reached else (self.cost_budget or math.inf)
        assert cfg.objective == "error_plus_cost"
        return (1.0 - self.acc) + cfg.cost_weight * self.totals["cost"] / self.cost_scale

    def check_observation(self, obs: np.ndarray) -> None:
        layout = self.u.layout
        for name, expected in self.client_features().items():
            np.testing.assert_allclose(layout.client(obs, name), expected, rtol=1e-6, atol=1e-7, err_msg=name)
        for name, expected in self.global_features().items():
            assert layout.global_(obs, name) == pytest.approx(expected, rel=1e-6, abs=1e-7), name


def checked_run(
    env_id: str, config: dict, decisions: list[ControlDecision | None], seed: int = 5, mixed: bool = True
) -> list[dict]:
    """Step through ``decisions`` (``None``: the env's own rule), checking everything against the reference.

    ``mixed``: the federation must have noisy and noiseless, finite-shot and exact clients (so that a feature
    computed on the wrong client's device shows).
    """
    env = gym.make(env_id, config={"reward_weights": WEIGHTS, "reward_terms": SCALE_TERMS, **config})
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    ref = Reference(env, info)
    assert ref.mixed_devices or not mixed
    assert u.config.reward_weights == WEIGHTS  # every term reported, none of them weighted 0
    ref.check_observation(obs)
    steps = []
    for i, decision in enumerate(decisions, start=1):
        action = u.action_codec.encode(decision) if decision is not None else env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        stopped = u.last_decision.stop
        terms = ref.step(stopped)
        ref.check_observation(obs)
        assert info["rewards"] == pytest.approx(terms, rel=1e-9, abs=1e-12)
        assert reward == pytest.approx(sum(WEIGHTS[k] * v for k, v in terms.items()), rel=1e-9, abs=1e-12)
        assert terminated == (stopped or terms["target_bonus"] == 1.0)
        assert truncated == (not terminated and (i == ref.budget or ref.over_cost_budget))
        ref.check_info(info, terminated=terminated)
        steps.append({"terms": terms, "report": u.last_report, "terminated": terminated, "truncated": truncated})
        if terminated or truncated:
            break
    return steps


def select_ids(ids: list[int], n: int = 4, **kwargs) -> ControlDecision:
    return ControlDecision.select(ids, n, **kwargs)

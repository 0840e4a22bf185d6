import gymnasium as gym
import pytest

import qflgym.envs  # noqa: F401  (registers the QFL/... ids)
from qflgym.config import ConfigError, deep_merge, load_preset, parse_yaml, preset_names
from qflgym.qfl_core import Federation
from qflgym.qfl_core.config import FederationConfig


def _error(overrides: dict) -> str:
    with pytest.raises(ConfigError) as info:
        FederationConfig.from_preset("default", overrides)
    return str(info.value)


def test_default_preset_loads_with_its_values():
    cfg = FederationConfig.from_preset("default")
    assert (cfg.clients.n_clients, cfg.circuit.n_qubits, cfg.circuit.n_layers, cfg.training.batch_size) == (
        10,
        4,
        2,
        32,
    )


def test_unknown_field_names_field_and_allowed_keys():
    msg = _error({"training": {"learning_rate": 0.1}})
    assert "training.learning_rate" in msg
    assert "allowed: optimizer, lr, local_steps, batch_size" in msg


def test_literal_error_names_allowed_values():
    msg = _error({"circuit": {"entangler": "all_to_all"}})
    assert "circuit.entangler" in msg and "'ring'" in msg and "'long_range'" in msg and "all_to_all" in msg


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data": {"dataset": "mnist"}}, "data.dataset"),
        ({"partition": {"scheme": "pathological"}}, "partition.scheme"),
        ({"backend": {"name": "qiskit"}}, "backend.name"),
        ({"strategy": {"name": "fedsgd"}}, "strategy.name"),
        ({"training": {"optimizer": "lbfgs"}}, "training.optimizer"),
    ],
)
def test_unknown_registry_names_list_allowed(overrides, field):
    msg = _error(overrides)
    assert field in msg and "allowed:" in msg


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"clients": {"availability": 1.5}}, "clients.availability"),
        ({"clients": {"depolarizing": [0.1, 0.9]}}, "clients.depolarizing"),
        ({"clients": {"readout_error": [0.2, 0.1]}}, "clients.readout_error"),
        ({"clients": {"shots": 0}}, "clients.shots"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"circuit": {"n_qubits": 0}}, "circuit.n_qubits"),
        ({"data": {"classes": [3]}}, "data.classes"),
    ],
)
def test_out_of_range_values_are_errors_not_clamped(overrides, field):
    assert field in _error(overrides)


def test_grouping_readout_needs_enough_qubits():
    msg = _error({"circuit": {"readout": "grouping", "n_qubits": 2}})
    assert "grouping" in msg and "n_qubits" in msg


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"allowed: .*default"):
        FederationConfig.from_preset("nope")


def test_missing_yaml_file():
    with pytest.raises(FileNotFoundError, match="config file not found"):
        FederationConfig.from_yaml("does/not/exist.yaml")


def test_merged_and_deep_merge():
    cfg = FederationConfig.from_preset("default").merged({"clients": {"n_clients": 4}})
    assert cfg.clients.n_clients == 4 and cfg.circuit.n_qubits == 4
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_configs_are_frozen():
    cfg = FederationConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.server_time_s = 1.0


@pytest.mark.parametrize("group", ["federations", "envs", "bench", "agents"])
def test_every_packaged_preset_loads_and_federations_validate(group):
    names = preset_names(group)
    assert names
    for name in names:
        assert isinstance(load_preset(group, name), dict)
        if group == "federations":
            FederationConfig.from_preset(name)


# -------------------------------------------------------------------------------------- NaN and infinities
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"clients": {"availability": NAN}}, "clients.availability"),
        ({"clients": {"latency_s": NAN}}, "clients.latency_s"),
        ({"clients": {"depolarizing": NAN}}, "clients.depolarizing"),
        ({"clients": {"readout_error": NAN}}, "clients.readout_error"),
        ({"clients": {"depolarizing": [0.0, NAN]}}, "clients.depolarizing.1"),
        ({"clients": {"latency_s": [1e-3, INF]}}, "clients.latency_s.1"),
        ({"training": {"lr": NAN}}, "training.lr"),
        ({"strategy": {"proximal_mu": INF}}, "strategy.proximal_mu"),
        ({"strategy": {"server_lr": INF}}, "strategy.server_lr"),
        ({"strategy": {"tau": NAN}}, "strategy.tau"),
        ({"data": {"angle_scale": INF}}, "data.angle_scale"),
        ({"partition": {"alpha": INF}}, "partition.alpha"),
        ({"server_time_s": INF}, "server_time_s"),
        ({"server_time_s": -INF}, "server_time_s"),
    ],
)
def test_non_finite_numbers_are_rejected_with_the_field_path(overrides, field):
    msg = _error(overrides)
    assert f"  {field}: Input should be a finite number" in msg, msg
    assert "≤" not in msg and "OverflowError" not in msg


def test_nan_availability_is_an_error_not_every_client_offline():
    with pytest.raises(ConfigError, match=r"clients\.availability: Input should be a finite number"):
        Federation({"clients": {"availability": NAN}}, seed=0)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"lr_multiplier": INF}, "lr_multiplier"),
        ({"lr_multiplier": NAN}, "lr_multiplier"),
        ({"lr_multiplier_range": [0.1, INF]}, "lr_multiplier_range.1"),
        ({"target_accuracy": NAN}, "target_accuracy"),
        ({"reward_weights": {"accuracy_gain": INF}}, "reward_weights.accuracy_gain"),
    ],
)
def test_env_config_rejects_non_finite_numbers_at_construction(config, field):
    with pytest.raises(ConfigError) as err:
        gym.make("QFL/StepSize-Tiny-v0", config=config)
    assert f"  {field}: Input should be a finite number" in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------ coercion
@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"clients": {"n_clients": True}}, "clients.n_clients", "valid integer"),
        ({"clients": {"shots": True}}, "clients.shots", "valid integer"),
        ({"clients": {"shots": [100, True]}}, "clients.shots.1", "valid integer"),
        ({"circuit": {"n_qubits": "4"}}, "circuit.n_qubits", "valid integer"),
        ({"circuit": {"n_layers": 2.0}}, "circuit.n_layers", "valid integer"),
        ({"evaluate_test": "false"}, "evaluate_test", "valid boolean"),
        ({"circuit": {"reupload": 1}}, "circuit.reupload", "valid boolean"),
        ({"training": {"lr": "0.1"}}, "training.lr", "valid number"),
        ({"training": {"lr": True}}, "training.lr", "valid number"),
        ({"data": {"classes": [0, "1"]}}, "data.classes.1", "valid integer"),
    ],
)
def test_no_silent_coercion(overrides, field, expected):
    msg = _error(overrides)
    assert f"  {field}: Input should be a {expected}" in msg, msg


@pytest.mark.parametrize("config", [{"round_budget": True}, {"federation_seed": True}, {"lr_bins": "3"}])
def test_env_config_has_no_silent_coercion_either(config):
    (field,) = config
    with pytest.raises(ConfigError, match=rf"  {field}: Input should be a valid integer"):
        gym.make("QFL/FullControl-Tiny-v0", config=config)


def test_integers_pass_as_floats_and_yaml_lists_become_tuples():
    cfg = FederationConfig.from_preset(
        "default",
        {"training": {"lr": 1}, "clients": {"latency_s": [1, 2], "shots": [100, None]}, "data": {"classes": [1, 0]}},
    )
    assert type(cfg.training.lr) is float and cfg.training.lr == 1.0
    assert cfg.clients.latency_s == (1.0, 2.0) and all(type(v) is float for v in cfg.clients.latency_s)
    assert cfg.clients.shots == (100, None) and cfg.data.classes == (1, 0)
    assert FederationConfig.from_dict(cfg.model_dump()) == cfg
    env = gym.make("QFL/StepSize-Tiny-v0", config={"lr_multiplier_range": [1, 4], "local_steps_range": [1, 3]})
    config = env.unwrapped.config
    assert config.lr_multiplier_range == (1.0, 4.0) and config.local_steps_range == (1, 3)


# ----------------------------------------------------------------------------------------- grouping readout
@pytest.mark.parametrize(
    ("data", "n_qubits", "n_classes"),
    [({"dataset": "digits", "classes": None}, 4, 10), ({"dataset": "classification", "classes": None}, 3, 4)],
)
def test_grouping_readout_counts_all_classes_of_the_dataset(data, n_qubits, n_classes):
    msg = _error({"data": data, "circuit": {"readout": "grouping", "n_qubits": n_qubits}})
    assert f"circuit.n_qubits >= number of classes; got {n_qubits} qubits for {n_classes} classes" in msg
    assert "all classes" in msg and "  : " not in msg


def test_grouping_readout_with_all_classes_that_fit_is_valid():
    cfg = FederationConfig.from_preset("default", {"data": {"dataset": "iris", "classes": None}})
    assert cfg.merged({"circuit": {"readout": "grouping", "n_qubits": 3}}).circuit.readout == "grouping"


# ------------------------------------------------------------------------------------------------ messages
@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"clients": {"shots": 1.5}}, "  clients.shots: Input should be a valid integer or a valid tuple (got 1.5)"),
        ({"clients": {"shots": 0}}, "  clients.shots: must be None (exact expectations), a positive integer or a "),
        ({"clients": {"availability": 0}}, "  clients.availability: must be in (0.0, 1.0] (got 0)"),
        (
            {"clients": {"depolarizing": [0.1, 0.9]}},
            "  clients.depolarizing: 0.9 is outside [0.0, 0.75] (got (0.1, 0.9))",
        ),
        ({"training": {"lr": 11}}, "  training.lr: Input should be less than or equal to 10 (got 11)"),
        ({"data": {"classes": [3]}}, "  data.classes: must list at least two distinct labels (got (3,))"),
    ],
)
def test_messages_name_the_field_once_and_the_value_once(overrides, line):
    msg = _error(overrides)
    assert line in msg, msg
    assert msg.count("got") == 1 and ".int" not in msg and "tuple[" not in msg


def test_out_of_range_box_action_prints_the_exact_values_outside():
    env = gym.make("QFL/StepSize-Tiny-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"outside: \[0\] = 1\.0000000001, \[1\] = nan$"):
        env.step([1.0000000001, NAN])


def test_yaml_exponent_notation_is_a_float_not_a_string(tmp_path):
    path = tmp_path / "fed.yaml"
    path.write_text("training:\n  lr: 1e-3\nstrategy:\n  tau: 5E-4\nclients:\n  latency_s: [1e-3, 2e-2]\n")
    cfg = FederationConfig.from_yaml(path)
    assert (cfg.training.lr, cfg.strategy.tau, cfg.clients.latency_s) == (1e-3, 5e-4, (1e-3, 2e-2))
    assert parse_yaml("a: x1e3\nb: 1_000\nc: 12") == {"a": "x1e3", "b": 1000, "c": 12}

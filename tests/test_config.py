import pytest

from qflgym.config import ConfigError, deep_merge
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

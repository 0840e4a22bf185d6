"""Quantum adapters QPA and QAA: circuits against PennyLane, parameter count, determinism, save/load/merge, errors."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pennylane as qml
import pytest
import torch

from qflgym.agents.llm.adapters import ADAPTERS, AdapterConfig, attach_adapter
from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.models import load_model
from qflgym.agents.llm.policy import load_policy, save_policy
from qflgym.agents.llm.quantum.circuits import EmbeddingCircuit, GeneratorCircuit
from qflgym.agents.llm.quantum.qpa import BANK_NAME, LoRALinear, QPALinear, materialize_qpa
from qflgym.agents.llm.train.sft_config import LLMSFTConfig
from qflgym.agents.runtime import make_env
from qflgym.config import ConfigError

QPA_SMALL = {"chunk": 256, "depth": 3, "widths": [16, 16]}


def _tiny(name: str, **kwargs):
    model, tok = load_model("tiny", seed=0)
    return attach_adapter(model, name, **kwargs), tok


def _ids(tok):
    return tok([" select 1 4 7 | lr 0.05 | steps 2 | stop no", " select none | lr 0.1 | steps 1 | stop yes"],
               return_tensors="pt", padding=True).input_ids  # fmt: skip


def _train_steps(model, ids, steps: int = 2) -> None:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval()


def _pl_outputs(qnode, *args):
    out = qnode(*args)
    return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


def test_generator_circuit_matches_pennylane_outputs_and_gradients():
    circuit = GeneratorCircuit(n_qubits=4, depth=3)
    angles = torch.rand(circuit.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 6
    coeffs = torch.linspace(-1, 1, 16, dtype=torch.float64)
    w1 = angles.clone().requires_grad_()
    (circuit(w1) * coeffs).sum().backward()
    w2 = angles.clone().requires_grad_()
    reference = circuit.qnode(interface="torch", diff_method="backprop")(w2)
    (reference * coeffs).sum().backward()
    torch.testing.assert_close(circuit(angles), reference.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-6)
    assert "RY" in qml.draw(circuit.qnode())(angles)


@pytest.mark.parametrize(("entangler", "readout"), [("ring", "expval"), ("chain", "probs")])
def test_embedding_circuit_matches_pennylane_outputs_and_gradients(entangler, readout):
    circuit = EmbeddingCircuit(n_qubits=3, depth=2, entangler=entangler, readout=readout)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(3, 6, dtype=torch.float64, generator=gen)  # padded 6 -> 8 amplitudes
    angles = torch.rand(circuit.shape, dtype=torch.float64, generator=gen) * 6
    coeffs = torch.linspace(-1, 1, circuit.n_outputs, dtype=torch.float64)
    w1 = angles.clone().requires_grad_()
    ours = circuit(inputs, w1)
    (ours * coeffs).sum().backward()
    w2 = angles.clone().requires_grad_()
    qnode = circuit.qnode(interface="torch", diff_method="backprop")
    reference = torch.stack([_pl_outputs(qnode, x, w2) for x in inputs])
    (reference * coeffs).sum().backward()
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-6)


def test_qpa_parameter_count_on_gpt2_lm_head_reproduces_the_paper():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_positions=32)  # GPT-2's lm_head geometry: 768 -> 50257
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"]))
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    lora = lora.unload()
    model = attach_adapter(lora, "qpa", target_modules=["lm_head"], r=4, chunk=2048, depth=8, shared=False)
    n_qpa = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bank = getattr(model, BANK_NAME)
    assert bank.generators[0].circuit.n_qubits == 7 and bank.generators[0].n_chunks == 100
    assert n_lora == 204_100
    assert n_qpa == 106_264
    assert round(100 * n_qpa / n_lora, 2) == 52.06


def test_qpa_starts_at_the_base_model_and_gradient_reaches_the_qnn_angles():
    model, tok = load_model("tiny", seed=0)
    ids = _ids(tok)
    with torch.no_grad():
        base = model(ids).logits
    model = attach_adapter(model, "qpa", dropout=0.0, **QPA_SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=1e-6)
    model.train()
    model(ids, labels=ids).loss.backward()
    angles = getattr(model, BANK_NAME).generators[0].angles
    assert angles.grad is not None and torch.isfinite(angles.grad).all() and angles.grad.abs().sum() > 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith(BANK_NAME)
    }


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_qpa_factors_are_identical_across_calls_and_processes(tmp_path, activation):
    model, _ = _tiny("qpa", activation=activation, **QPA_SMALL)
    bank = getattr(model, BANK_NAME)
    first = {k: torch.cat([b.flatten(), a.flatten()]) for k, (b, a) in bank.generate().items()}
    second = {k: torch.cat([b.flatten(), a.flatten()]) for k, (b, a) in bank.generate().items()}
    for key in first:
        assert torch.equal(first[key], second[key])
    out = tmp_path / "factors.pt"
    script = (
        "import torch; from qflgym.agents.llm.models import load_model; "
        "from qflgym.agents.llm.adapters import attach_adapter; "
        f"m, _ = load_model('tiny', seed=0); m = attach_adapter(m, 'qpa', activation={activation!r}, **{QPA_SMALL!r}); "
        "f = m.qflgym_qpa.generate(); "
        f"torch.save({{k: torch.cat([b.flatten(), a.flatten()]).detach() for k, (b, a) in f.items()}}, {str(out)!r})"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    other = torch.load(out)
    assert other.keys() == first.keys()
    for key in first:
        assert torch.equal(first[key].detach(), other[key])


def test_qpa_save_load_merge_and_materialize(tmp_path):
    model, tok = _tiny("qpa", dropout=0.0, **QPA_SMALL)
    ids = _ids(tok)
    _train_steps(model, ids)
    with torch.no_grad():
        trained = model(ids).logits
    adapter = ADAPTERS.get("qpa")
    adapter.save(model, tmp_path / "adapter")
    fresh, _ = load_model("tiny", seed=0)
    loaded = adapter.load(fresh, tmp_path / "adapter")
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, trained, rtol=0, atol=0)
        assert (loaded(ids).logits - load_model("tiny", seed=0)[0](ids).logits).abs().max() > 1e-3
    materialized = materialize_qpa(loaded)
    assert not hasattr(materialized, BANK_NAME)
    assert any(isinstance(m, LoRALinear) for m in materialized.modules())
    with torch.no_grad():
        torch.testing.assert_close(materialized(ids).logits, trained, rtol=1e-5, atol=1e-5)
    merged = adapter.merge(materialized)
    assert not any(isinstance(m, (LoRALinear, QPALinear)) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained, rtol=1e-5, atol=1e-5)


def test_qaa_starts_at_the_base_model_trains_and_saves(tmp_path):
    model, tok = load_model("tiny", seed=0)
    ids = _ids(tok)
    with torch.no_grad():
        base = model(ids).logits
    model = attach_adapter(model, "qaa", depth=2, readout="expval")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
    _train_steps(model, ids)
    angles = model.model.layers[0].self_attn.q_proj.angles
    assert angles.grad is not None and angles.grad.abs().sum() > 0
    with torch.no_grad():
        trained = model(ids).logits
    assert (trained - base).abs().max() > 1e-3
    adapter = ADAPTERS.get("qaa")
    adapter.save(model, tmp_path / "adapter")
    loaded = adapter.load(load_model("tiny", seed=0)[0], tmp_path / "adapter", trainable=True)
    assert all(p.requires_grad for n, p in loaded.named_parameters() if "angles" in n or "projection" in n)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, trained, rtol=0, atol=0)
    with pytest.raises(ValueError, match="'qaa' adapter, not 'qpa'"):
        ADAPTERS.get("qpa").load(load_model("tiny", seed=0)[0], tmp_path / "adapter")


@pytest.mark.parametrize("name", ["qpa", "qaa"])
def test_quantum_policies_save_and_load_through_the_policy_files(tmp_path, name):
    env = make_env("QFL/ClientSelection-Tiny-v0")
    config = LLMSFTConfig(adapter=name, adapter_options={"depth": 2}, lora_r=4, progress=False)
    assert config.adapter_config().extra == {"depth": 2}
    model, tok = config.fresh_model(ADAPTERS.get(name))
    ids = _ids(tok)
    _train_steps(model, ids, 1)
    with torch.no_grad():
        trained = model(ids).logits
    codec = TextCodec.from_env(env)
    path = save_policy(tmp_path / "policy", model, model_name="tiny", adapter_name=name, codec_config=codec.config)
    for merge in (False, True):
        policy = load_policy(path, env, seed=0, merge=merge)
        with torch.no_grad():
            torch.testing.assert_close(policy.model(ids).logits, trained, rtol=1e-5, atol=1e-5)
    assert len(policy.generate(["QFL control"])) == 1
    env.close()


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("qpa", {"chunk": 0}, "'chunk'"),
        ("qpa", {"chunk": -5}, "'chunk'"),
        ("qpa", {"depth": 0}, "'depth'"),
        ("qpa", {"activation": "sigmoid"}, "'activation'"),
        ("qpa", {"widths": []}, "'widths'"),
        ("qpa", {"chunk": 1, "max_qubits": 8}, "max_qubits=8"),
        ("qpa", {"n_qubits": 3}, "n_qubits"),
        ("qpa", {"target_modules": ["no_such_proj"]}, "'no_such_proj' matches no module"),
        ("qpa", {"target_modules": ["embed_tokens"]}, "only torch.nn.Linear"),
        ("qaa", {"depth": 0}, "'depth'"),
        ("qaa", {"readout": "amplitudes"}, "'readout'"),
        ("qaa", {"scale": float("nan")}, "'scale'"),
        ("qaa", {"max_qubits": 5}, "max_qubits=5"),
        ("qaa", {"target_modules": ["no_such_proj"]}, "target_modules entry 'no_such_proj'"),
    ],
)
def test_bad_quantum_options_name_the_field(name, options, field):
    model, _ = load_model("tiny", seed=0)
    with pytest.raises(ConfigError, match=field):
        attach_adapter(model, name, **options)


def test_adapter_config_extra_reaches_the_adapter():
    model, _ = load_model("tiny", seed=0)
    config = AdapterConfig(name="qpa", r=2, extra={"chunk": 128, "depth": 2, "shared": False})
    model = ADAPTERS.get("qpa").attach(model, config, ("q_proj",))
    bank = getattr(model, BANK_NAME)
    assert len(bank.generators) == 2  # one per layer's q_proj
    assert all(g.circuit.depth == 2 for g in bank.generators)

"""Quantum adapters of the LLM policy: QPA (generated LoRA weights) and QAA (amplitude-embedded PQCs).

:mod:`.circuits` defines both circuits with PennyLane and runs them with the batched torch statevector of
:mod:`.kernel`; :mod:`.qpa` and :mod:`.qaa` build the adapter layers; :mod:`.options` holds their options;
:mod:`.adapters` registers them (``qpa``, ``qaa``) in :data:`qflgym.agents.llm.adapters.ADAPTERS`. Attach one to any
Hugging Face model with :func:`qflgym.agents.llm.adapters.attach_adapter`.
"""

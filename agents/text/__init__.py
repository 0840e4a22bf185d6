"""Text quantum federated learning on the agents side: the ``adapter`` federation kind (LLM-QFL done for real).

:mod:`.adapter_federation` registers ``model.kind: adapter`` with :data:`qflgym.qfl_core.kinds.FEDERATION_KINDS`
through the entry-point group ``qflgym.federation_kinds``: every selected client fine-tunes the sentence
encoder's adapter (any entry of :data:`qflgym.agents.llm.adapters.ADAPTERS`) and the head on its own texts.
"""

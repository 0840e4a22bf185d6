"""``LLMPolicy``: a causal language model behind Stable-Baselines3's ``predict`` protocol.

Each decision renders the observation as a prompt (:class:`~qflgym.agents.llm.codec.TextCodec`), generates a short
completion and parses it into the env's action. Decoding is **constrained** by default: a hand-written loop over
the model body with a KV cache, where each step scores only the tokens the grammar allows next
(:class:`~qflgym.agents.llm.grammar.TokenConstraint`) — the LM head is evaluated on those few rows instead of the
whole vocabulary (262k rows for Gemma-3), generation stops as soon as the grammar leaves EOS as the only choice,
and a batch of observations (one per sub-env of a ``VecEnv``) is decoded together. With ``constrained=False`` the
policy uses ``model.generate`` and relies on the parser's fallbacks; either way ``invalid_rate`` is tracked.

Saved policies are directories written by :func:`save_policy` (adapter weights + ``qflgym_llm.json``) and loaded
with :func:`load_policy` / :meth:`LLMPolicy.from_pretrained`, by ``qflgym llm eval`` and by the benchmark harness
(controller ``llm`` with ``path=...``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qflgym.agents.llm.codec import CodecConfig, TextCodec
from qflgym.agents.llm.grammar import ActionGrammar, TokenConstraint

__all__ = ["POLICY_META", "LLMPolicy", "load_policy", "save_policy"]

#: Name of the metadata file of a saved policy directory.
POLICY_META = "qflgym_llm.json"


def _causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` module behind a (possibly PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LLMPolicy:
    """An LLM acting on a qflgym env through the text codec.

    Args:
        model: A causal LM (optionally a PEFT model).
        tokenizer: Its tokenizer.
        codec: The env's text codec.
        constrained: Grammar-constrained decoding (default) or free ``generate`` + parser fallbacks.
        max_new_tokens: Generation budget (default: enough for the longest canonical completion).
        temperature: Sampling temperature when ``deterministic=False``.
        batch_size: Observations decoded together.
        seed: Seed of the sampling generator.

    Attributes:
        decision_times: Seconds per decision of every ``predict`` call (a batch's time divided by its size).
    """

    uses_action_masks = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        codec: TextCodec,
        *,
        constrained: bool = True,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        batch_size: int = 16,
        seed: int | None = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.codec = codec
        self.constrained = constrained
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.grammar = ActionGrammar(codec.spec, codec.config.lr_digits)
        self.constraint = TokenConstraint(self.grammar, tokenizer) if constrained else None
        self.max_new_tokens = max_new_tokens or self._default_budget()
        self.decision_times: list[float] = []
        self._forced: tuple[list[int], Any] | None = None
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times: list[float] = []
        lm = _causal_lm(model)
        self._body = getattr(lm, lm.base_model_prefix)
        self._head = lm.get_output_embeddings()
        self._softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.last_completions: list[str] = []
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.eval()

    def _default_budget(self) -> int:
        spec = self.codec.spec
        full = self.codec.render(
            self.codec._build(None, {"select": np.ones(spec.n_clients, bool)} if spec.select else {})
        )
        return len(self.tokenizer(full, add_special_tokens=False).input_ids) * 2 + 8

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, env: Any, **kwargs: Any) -> LLMPolicy:
        """Load a policy saved by :func:`save_policy` for ``env`` (see :func:`load_policy`)."""
        return load_policy(path, env, **kwargs)

    @classmethod
    def from_model_name(
        cls, name: str, env: Any, *, seed: int = 0, codec_config: CodecConfig | None = None, **kwargs: Any
    ) -> LLMPolicy:
        """An untrained policy from a registered model name (``tiny``, ``gemma3-270m``) or checkpoint path."""
        from qflgym.agents.llm.models import load_model

        model, tokenizer = load_model(name, seed=seed)
        return cls(model, tokenizer, TextCodec.from_env(env, codec_config), seed=seed, **kwargs)

    # --------------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[str], deterministic: bool = True) -> list[str]:
        """Completions for ``prompts`` (constrained or free, per the policy's setting)."""
        ids, _ = self.generate_ids(prompts, deterministic)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids]

    def generate_ids(self, prompts: Sequence[str], deterministic: bool = True) -> tuple[list[list[int]], list[bool]]:
        """Completion token ids (EOS excluded) for ``prompts``, and whether each ended with EOS."""
        ids: list[list[int]] = []
        finished: list[bool] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[i : i + self.batch_size])
            gen = self._generate_constrained if self.constrained else self._generate_free
            out, done = gen(chunk, deterministic)
            ids += out
            finished += done
        return ids, finished

    @torch.inference_mode()
    def _generate_free(self, prompts: list[str], deterministic: bool) -> tuple[list[list[int]], list[bool]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs: dict[str, Any] = {"do_sample": not deterministic, "max_new_tokens": self.max_new_tokens}
        if not deterministic:
            kwargs |= {"temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        gen = self.model.generate(**enc, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        eos = self.tokenizer.eos_token_id
        ids, finished = [], []
        for row in gen[:, enc.input_ids.shape[1] :].tolist():
            if eos in row:
                ids.append(row[: row.index(eos)])
                finished.append(True)
            else:
                ids.append(row)
                finished.append(False)
        return ids, finished

    def _forced_prefix(self) -> tuple[list[int], Any]:
        """Tokens the grammar forces before the first choice (e.g. `` select``), and the state after them."""
        assert self.constraint is not None
        state = self.constraint.start()
        forced: list[int] = []
        while len(forced) < self.max_new_tokens:
            allowed, nexts = self.constraint.allowed(state)
            if allowed.numel() != 1 or int(allowed[0]) == self.constraint.eos_token_id:
                break
            forced.append(int(allowed[0]))
            state = nexts[0]
        return forced, state

    @torch.inference_mode()
    def _generate_constrained(self, prompts: list[str], deterministic: bool) -> tuple[list[list[int]], list[bool]]:
        """Grammar-constrained decoding with a KV cache (see the module docstring).

        Identical prompts (a GRPO group) are prefilled once and their cache rows repeated; the tokens the grammar
        forces at the start are appended to the prompts, so they cost no decoding step.
        """
        assert self.constraint is not None
        tok = self.tokenizer
        if self._forced is None:
            self._forced = self._forced_prefix()
        forced, start_state = self._forced
        unique = list(dict.fromkeys(prompts))
        enc = tok(unique, return_tensors="pt", padding=True)
        input_ids, mask = enc.input_ids, enc.attention_mask
        if forced:
            extra = torch.tensor([forced] * len(unique), dtype=input_ids.dtype)
            input_ids = torch.cat([input_ids, extra], dim=1)
            mask = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
        n = len(prompts)
        finished = [False] * n
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        states = [start_state] * n
        done = [False] * n
        tokens: list[list[int]] = [list(forced) for _ in range(n)]
        weight = self._head.weight
        bias = getattr(self._head, "bias", None)
        eos = self.constraint.eos_token_id
        pad = tok.pad_token_id
        past = None
        step_ids, step_pos = input_ids, positions
        expand = None if len(unique) == n else torch.tensor([unique.index(p) for p in prompts])
        for _ in range(self.max_new_tokens):
            out = self._body(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            hidden = out.last_hidden_state[:, -1]
            if expand is not None:  # after the shared prefill: one cache row per completion
                past.reorder_cache(expand)
                hidden, mask, step_pos = hidden[expand], mask[expand], step_pos[expand]
                expand = None
            chosen = []
            for b in range(n):
                if done[b]:
                    chosen.append(pad)
                    continue
                allowed, nexts = self.constraint.allowed(states[b])
                if allowed.numel() == 0:  # dead end (cannot happen for a consistent grammar): stop here
                    done[b] = True
                    chosen.append(pad)
                    continue
                logits = hidden[b] @ weight[allowed].T
                if bias is not None:
                    logits = logits + bias[allowed]
                if self._softcap:
                    logits = torch.tanh(logits / self._softcap) * self._softcap
                if deterministic or allowed.numel() == 1:
                    j = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits.float() / max(self.temperature, 1e-5), -1)
                    j = int(torch.multinomial(probs, 1, generator=self.generator))
                token = int(allowed[j])
                if token == eos:
                    done[b] = finished[b] = True
                    chosen.append(pad)
                    continue
                tokens[b].append(token)
                states[b] = nexts[j]
                nxt_allowed, _ = self.constraint.allowed(states[b])
                if nxt_allowed.numel() == 1 and int(nxt_allowed[0]) == eos:
                    done[b] = finished[b] = True  # only EOS can follow: finished without another forward pass
                chosen.append(token)
            if all(done):
                break
            step_ids = torch.tensor(chosen, dtype=input_ids.dtype).unsqueeze(1)
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
            step_pos = step_pos[:, -1:] + 1
        return tokens, finished

    # ------------------------------------------------------------------------------------------ predict
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, Any]:
        """Return ``(action, state)`` for one flat observation or a batch ``[n_envs, D]`` (SB3's protocol).

        Args:
            observation: One flat observation or a batch of them.
            state: Passed through (the policy is stateless).
            episode_start: Ignored (stateless).
            deterministic: Greedy decoding; otherwise sampling at :attr:`temperature`.
            action_masks: Ignored (availability is read from the observation).
        """
        obs = np.asarray(observation)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        start = time.perf_counter()
        completions = self.generate(self.codec.prompts(batch), deterministic=deterministic)
        elapsed = time.perf_counter() - start
        self.decision_times += [elapsed / len(batch)] * len(batch)
        self._episode_times.append(elapsed / len(batch))
        self.last_completions = completions
        actions = []
        for o, text in zip(batch, completions, strict=True):
            action, result = self.codec.to_action(text, o)
            self._episode["completions"] += 1
            self._episode["invalid"] += int(not result.valid)
            actions.append(np.asarray(action))
        stacked = np.stack(actions)
        return (stacked[0] if single else stacked), state

    @property
    def invalid_rate(self) -> float:
        """Fraction of invalid completions since the policy was built (or :meth:`reset_stats`)."""
        return self.codec.invalid_rate

    def reset_stats(self) -> None:
        """Zero the invalid-output counters and the timings."""
        self.codec.reset_stats()
        self.decision_times.clear()
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times = []

    def episode_metrics(self) -> dict[str, float]:
        """Per-episode numbers for the benchmark harness: invalid-output rate and median seconds per decision.

        Counts since the previous call (the evaluation loop calls it once at the end of every episode).
        """
        n = self._episode["completions"]
        times = self._episode_times
        metrics = {
            "invalid_rate": self._episode["invalid"] / n if n else 0.0,
            "decision_latency_s": float(np.median(times)) if times else float("nan"),
        }
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times = []
        return metrics


# ---------------------------------------------------------------------------------------------- save/load


def save_policy(
    path: str | Path,
    model: Any,
    *,
    model_name: str,
    adapter_name: str,
    codec_config: CodecConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a fine-tuned policy directory: ``adapter/`` (adapter weights) and ``qflgym_llm.json``.

    Args:
        path: Output directory.
        model: The adapted model (e.g. a ``PeftModel``).
        model_name: Base model name or checkpoint path (what :func:`~qflgym.agents.llm.models.load_model` takes).
        adapter_name: Adapter registry name (``lora``, ``qlora``, ...).
        codec_config: The prompt/grammar options the model was trained with.
        extra: More metadata (env id, teacher, trainer, ...).
    """
    from qflgym.agents.llm.adapters import ADAPTERS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ADAPTERS.get(adapter_name).save(model, path / "adapter")
    meta = {
        "model": model_name,
        "adapter": adapter_name,
        "codec": asdict(codec_config),
        **(extra or {}),
    }
    (path / POLICY_META).write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_policy(path: str | Path, env: Any, *, seed: int = 0, dtype: Any = None, **kwargs: Any) -> LLMPolicy:
    """Load a saved policy for ``env``.

    Args:
        path: A directory written by :func:`save_policy`.
        env: The env (or VecEnv) the policy acts on (its layout and action codec build the text codec).
        seed: Seed of sampling (and of a randomly initialized base such as ``tiny``: use the training seed).
        dtype: Override of the model dtype (default float32).
        **kwargs: :class:`LLMPolicy` options (``constrained``, ``temperature``, ...).

    Raises:
        FileNotFoundError: If ``path`` is not a saved policy.
    """
    from qflgym.agents.llm.adapters import ADAPTERS
    from qflgym.agents.llm.models import load_model

    path = Path(path)
    meta_path = path / POLICY_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved LLM policy (no {POLICY_META})")
    meta = json.loads(meta_path.read_text())
    adapter = ADAPTERS.get(meta["adapter"])
    base_seed = int(meta.get("model_seed", seed))
    model, tokenizer = load_model(
        meta["model"], seed=base_seed, dtype=dtype or torch.float32, progress=False, **adapter.base_model_kwargs()
    )
    model = adapter.load(model, path / "adapter")
    codec_options = dict(meta.get("codec", {}))
    codec = TextCodec.from_env(env, CodecConfig(**codec_options))
    return LLMPolicy(model, tokenizer, codec, seed=seed, **kwargs)

"""Finding the modules an adapter targets, swapping them, and storing an adapter's weights.

A target name matches a module whose full name equals it or ends with ``.<name>`` (PEFT's rule), so ``q_proj``
matches every layer's query projection and ``model.layers.3.self_attn.q_proj`` one of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qflgym.config import ConfigError

__all__ = ["META_FILE", "WEIGHTS_FILE", "find_targets", "load_state", "read_meta", "replace_module", "save_state"]

#: What a saved quantum adapter directory holds.
META_FILE = "qflgym_quantum.json"
WEIGHTS_FILE = "adapter.safetensors"


def find_targets(model: nn.Module, targets: Iterable[str], adapter: str) -> list[tuple[str, nn.Linear]]:
    """The ``(name, Linear)`` pairs of ``model`` matched by ``targets``, in model order.

    Raises:
        ConfigError: A target matches no module, or matches a module that is not an ``nn.Linear``.
    """
    targets = list(targets)
    if not targets:
        raise ConfigError(f"{adapter}: 'target_modules' is empty; name at least one Linear module")
    found: dict[str, nn.Linear] = {}
    for target in targets:
        matched = [(n, m) for n, m in model.named_modules() if n == target or n.endswith("." + target)]
        if not matched:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"{adapter}: target_modules entry {target!r} matches no module of {type(model).__name__}; "
                f"its Linear modules are named {', '.join(linears)}"
            )
        for name, module in matched:
            if not isinstance(module, nn.Linear):
                raise ConfigError(
                    f"{adapter}: target_modules entry {target!r} matches {name!r}, a {type(module).__name__}; "
                    "only torch.nn.Linear modules can be adapted"
                )
            found[name] = module
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(found.items(), key=lambda item: order[item[0]])


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def save_state(path: str | Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Write ``meta`` (JSON) and ``state`` (safetensors) into the directory ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS_FILE))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved quantum adapter.

    Raises:
        FileNotFoundError: ``path`` holds no saved quantum adapter.
    """
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved quantum adapter (no {META_FILE})")
    return json.loads(meta_path.read_text())


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors saved by :func:`save_state`."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / WEIGHTS_FILE))

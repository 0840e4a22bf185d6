"""``QFL/FullControl-v0``: select clients, set the step size and decide termination, jointly."""

from __future__ import annotations

from typing import Any

from .actions import ActionCodec, FullControlCodec
from .base import QFLEnv
from .config import merge_presets

__all__ = ["FullControlEnv"]


class FullControlEnv(QFLEnv):
    """Select clients, set the step size and decide termination, jointly.

    ## Description

    The quantum federation of `QFL/ClientSelection-v0` with every knob in the controller's hands: which
    clients train, with which learning rate and how many local steps, and whether to stop.

    ## Action Space

    One 1-D `MultiDiscrete` (SB3- and MaskablePPO-compatible) of length `N + 3`:

    | index | choices | meaning |
    |---|---|---|
    | `0 .. N-1` | 2 | client `i` trains iff 1 |
    | `N` | `lr_bins` | lr multiplier `low * (high / low) ** (b / (lr_bins - 1))` of `training.lr` |
    | `N + 1` | `s_max - s_min + 1` | `local_steps = s_min + index` |
    | `N + 2` | 2 | 1 = stop now (the other entries are ignored) |

    Non-SB3 controllers use `env.unwrapped.action_codec.encode(ControlDecision(selected, lr, local_steps,
    stop))` (the lr is snapped to the nearest bin in log scale) and `decode(action)`.

    ## Observation Space

    The same as `QFL/ClientSelection-v0` (`21 N + 12` features; see `docs/envs/observation.md`).

    ## Rewards

    Named terms weighted by `reward_weights`, all in `info["rewards"]`: by default `accuracy_gain`,
    `communication_cost`, `wall_time_cost`, `shot_cost`, `round_cost` and `target_bonus`, with the weights of
    `configs/envs/full_control.yaml`; `loss_drop`, `stop_accuracy` and `early_stop_penalty` are reported
    with weight 0.

    ## Starting State

    As in `QFL/ClientSelection-v0`: a new federation per episode seed unless `federation_seed` is set.

    ## Episode End

    `terminated` when the controller stops or the validation accuracy reaches `target_accuracy`;
    `truncated` after `round_budget` steps.

    ## Arguments

    `gym.make("QFL/FullControl-v0", config={...})`; relevant fields: `lr_multiplier_range`, `lr_bins`,
    `local_steps_range` (defaults in `configs/envs/full_control.yaml`). Variants: `QFL/FullControl-Hard-v0`,
    `QFL/FullControl-Tiny-v0` (presets `hard`, `tiny`).

    ## Version History

    * v0: Initial version.
    * v1 (`QFL/FullControl-v1`, `-Hard`, `-Tiny`; preset `full_control_v1`) over `configs/envs/v1.yaml`: the QPU
      federation `configs/federations/qpu.yaml` (24 clients, Dirichlet 0.3, finite shots, readout error, latencies
      over two orders of magnitude, availability 0.6-1), the v1 observation (`step_time`, `step_shot_cost` per
      client, `cost_spent`) and the operator's cost (wall time + `shot_price` x shots, in `info["cost"]`,
      objective in `info["objective"]`). Objective `error_plus_cost`, as RoundTermination-v1, with selection and
      step size controlled too. v0 is unchanged.
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Base defaults merged with ``configs/envs/full_control.yaml``."""
        return merge_presets(super().default_config(), "full_control")

    def _make_codec(self) -> ActionCodec:
        cfg = self.config
        return FullControlCodec(self.n_clients, self.lr_map, cfg.lr_bins, cfg.local_steps_range)

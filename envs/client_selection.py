"""``QFL/ClientSelection-v0``: choose which clients train in each round of quantum federated learning."""

from __future__ import annotations

from typing import Any

from .actions import ActionCodec, SelectionCodec, TopKSelectionCodec
from .base import QFLEnv
from .config import merge_presets

__all__ = ["ClientSelectionEnv"]


class ClientSelectionEnv(QFLEnv):
    """Choose which clients train in each round of quantum federated learning.

    ## Description

    A server trains a variational quantum classifier with federated averaging over `N` quantum clients whose
    data are non-IID and whose devices differ in noise, shots, latency and availability. Each step is one
    federated round: the controller picks the clients that train; the learning rate and local steps are fixed
    by the config (`configs/envs/client_selection.yaml`) and the episode never stops early by itself except on
    reaching the target accuracy.
    The task is to reach the target validation accuracy in as few rounds (and bytes) as possible.

    ## Action Space

    `MultiBinary(N)`: client `i` trains iff `action[i] == 1`. All zeros is valid (an empty round: nothing
    trains, the server's time and one round of the budget are spent). With `selection_budget: k` the action
    is a `Box(-1, 1, (N,), float32)` of scores instead: the (at most) `k` clients with the highest positive
    scores train. Selecting an unavailable client is allowed; it drops out (see `action_masks()`).
    `env.unwrapped.action_codec` decodes actions to `ControlDecision`s and encodes them back.

    ## Observation Space

    `Box(float32, (21 N + 12,))`: the client block `[N, 21]` row-major, then 12 global features
    (`env.unwrapped.layout` reads them by name; `observation: dict` gives `{"clients", "global"}` instead):

    | client feature | meaning | range |
    |---|---|---|
    | data_size | training samples / largest client's | (0, 1] |
    | label_skew | total-variation distance to the global label distribution | [0, 1] |
    | last_loss | loss of the global model on it when it last trained / ln K (1 = never trained) | [0, 10] |
    | rounds_since_selected | rounds since last selected / round budget | [0, 1] |
    | times_selected | times selected / round budget | [0, 1] |
    | noise_level | `1 - (1 - 4p/3)^L (1 - 2r)` (depolarizing p, readout error r, L layers) | [0, 1] |
    | shot_noise | `1/sqrt(shots)`, 0 for exact expectations | [0, 1] |
    | latency | seconds per circuit execution / slowest client's | (0, 1] |
    | available | 1 if it can take part in the coming round | {0, 1} |
    | last_update_norm | `tanh(norm / (lr x local steps))` of its last update | [0, 1) |
    | update_cosine | cosine of its last update with that round's aggregate | [-1, 1] |
    | label_frac_0 ... label_frac_9 | fraction of its training samples in class c (0 for c >= K) | [0, 1] |

    | global feature | meaning | range |
    |---|---|---|
    | round_fraction | rounds run / round budget | [0, 1] |
    | val_accuracy, val_loss | of the global model (loss / ln K) | [0, 1], [0, 10] |
    | val_accuracy_change, val_loss_change | in the last round | [-1, 1], [-10, 10] |
    | cumulative_bytes, cumulative_wall_time, cumulative_shots | / (budget x a full round's) | [0, 10] |
    | learning_rate | `log10(lr / base lr)` of the last round | [-3, 3] |
    | local_steps | last round's / largest allowed | [0, 10] |
    | available_fraction | clients available in the coming round | [0, 1] |
    | target_gap | target accuracy - val_accuracy (0 without target) | [-1, 1] |

    ## Rewards

    The weighted sum of named terms (`reward_weights`), each reported in `info["rewards"]`: by default
    `accuracy_gain`, `communication_cost` (bytes / a full round's), `round_cost` and `target_bonus`, with
    the weights of `configs/envs/client_selection.yaml`; the other built-in terms are reported with weight 0.
    Add terms by config callable, decorator or the `qflgym.rewards` entry-point group (see
    `qflgym.envs.rewards`).

    ## Starting State

    `reset(seed=s)` draws a federation seed from `np_random`, so every episode has a new data partition,
    client population (device profiles) and initial model (set `federation_seed` to keep one federation).
    The initial observation holds the static client features and the initial model's validation metrics.

    ## Episode End

    * `terminated`: the validation accuracy reaches `target_accuracy`.
    * `truncated`: `round_budget` rounds were run (the env truncates by itself; `env.spec.max_episode_steps`
      is the config's `round_budget`). Stepping after the end raises `RuntimeError`.

    ## Arguments

    `gym.make("QFL/ClientSelection-v0", config={...}, render_mode=None | "ansi" | "rgb_array")`; any field of
    `default_config()` may be overridden, the `federation` sub-dict is deep-merged over the
    `federation_preset`. Variants: `QFL/ClientSelection-Hard-v0` and `QFL/ClientSelection-Tiny-v0` merge the
    env presets `configs/envs/hard.yaml` and `configs/envs/tiny.yaml` (registration kwargs `presets`).

    ## Version History

    * v0: Initial version (`configs/envs/client_selection.yaml`). Before release the observation of every
      env gained per-client label-distribution features (`label_frac_0..9`). A variant with more local
      steps, a higher target and a larger round cost was measured and not adopted (see docs/results.md).
    * v1 (`QFL/ClientSelection-v1`, `-Hard`, `-Large` (120 clients), `-Tiny`; presets `client_selection_v1`,
      `hard_v1`, `large_v1`, `tiny_v1`) over `configs/envs/v1.yaml`: the QPU federation
      `configs/federations/qpu.yaml` (24 clients, Dirichlet 0.3, finite shots, readout error, latencies over two
      orders of magnitude, availability 0.6-1), the v1 observation (`step_time`, `step_shot_cost` per client,
      `cost_spent`) and the operator's cost (wall time + `shot_price` x shots, in `info["cost"]`, objective in
      `info["objective"]`). Objective `cost_to_target`: the cost until 0.8 validation accuracy, censored at
      `cost_budget`; actions are top-k scores (`selection_budget`), so cohorts are compared at a bounded size;
      reward `accuracy_gain - 0.1 cost / cost_scale + target_bonus`. v0 is unchanged.
      Text variants (docs/text_qfl.md): `QFL/ClientSelection-Text-v1` (preset `text_v1`: the text federation
      `configs/federations/text.yaml`, frozen all-MiniLM-L6-v2 embeddings of Rotten Tomatoes snippets -> PCA ->
      4-qubit VQC, target 0.62) and `QFL/ClientSelection-TextAdapter-v1` (also `text_adapter_v1`: clients
      fine-tune a LoRA adapter of the encoder and the VQC head, `model.kind: adapter`).
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Base defaults merged with ``configs/envs/client_selection.yaml``."""
        return merge_presets(super().default_config(), "client_selection")

    def _make_codec(self) -> ActionCodec:
        cfg = self.config
        if cfg.selection_budget is None:
            return SelectionCodec(self.n_clients, self._fixed_lr, self._fixed_steps)
        return TopKSelectionCodec(self.n_clients, cfg.selection_budget, self._fixed_lr, self._fixed_steps)

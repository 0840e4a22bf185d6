"""Controllers, SB3 training, the benchmark harness and the ``qflgym`` CLI (imported lazily by submodule)."""

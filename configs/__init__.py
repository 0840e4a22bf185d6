"""YAML presets shipped with qflgym: federations/, envs/, agents/ (rl-zoo format), bench/ suites."""

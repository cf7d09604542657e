"""The simulated survey: physics of the sources, cadence, pixels, shards, alerts and baselines."""

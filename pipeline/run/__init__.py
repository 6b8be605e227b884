"""The Ray runner and what serves it: plan, waves, workers, staging, assembly, simulation."""

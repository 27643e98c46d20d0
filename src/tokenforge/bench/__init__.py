"""The benchmark harness behind `tokenforge bench`: datasets, runner, baselines and reports."""

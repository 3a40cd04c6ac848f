"""The experiment: presets, the run folder and its cached stages, the sweep, results and the report."""

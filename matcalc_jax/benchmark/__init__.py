"""Benchmarks: the rules' closed forms against autodiff (``.rules``), model-scale
training steps (``.models``), and their tables, JSON, CSV and plots (``.output``)."""

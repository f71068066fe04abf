"""Benchmarks: the rules' closed forms against autodiff (:mod:`.rules`), model-scale
training steps (:mod:`.models`), and their tables, JSON, CSV and plots (:mod:`.output`)."""

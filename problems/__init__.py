"""The paper's experiments as runnable tasks, run from a checkout as ``python -m problems.NAME``.

Each task will hold its data loading, models, baselines, training loop, metrics and the
table or figure it writes. None is implemented yet; the library's own real-data example
is ``examples/digits_prox_layer.py``.
"""

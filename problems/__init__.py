"""Experiments of Li, Ma and Zhang, "Proximal Mapping for Deep Regularization" (NeurIPS 2020).

Each is a runnable task, started from a checkout as ``python -m problems.NAME``, and will
contain its data loading, models, baselines, training loop, metrics and the table or
figure it writes. None is implemented yet. The library's own real-data example is
``examples/digits_prox_layer.py``.
"""

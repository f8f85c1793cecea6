"""Reporting: the paper's tables and figures from finished runs (``tables``, ``figures``; Multi-MNIST's
Figure 2 ``multimnist``, its auxiliary mode ``multimnist_aux``, Speech Commands' tables ``speech_commands``).
Reads runs through ``experiments.storage`` and the table declarations of ``experiments.orchestration.plan``."""

"""Reporting: the paper's tables and figures from finished runs (``tables``, ``figures``; Multi-MNIST's
Figure 2 ``multimnist``, its auxiliary mode ``multimnist_aux``, Speech Commands' tables ``speech_commands``).
Imports ``experiments.storage`` (runs, columns), ``experiments.training`` (tasks, Δm) and the table declarations of
``experiments.orchestration.plan``; the launchers of ``orchestration`` import reporting, never the reverse."""

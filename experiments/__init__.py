"""The experiments: the commands at this level (``train_*.py``, ``benchmark_speed.py``, ``make_tables.py``,
``make_figures.py``, ``sweep.py``, ...) over layers, each importing only the ones before it: ``storage`` →
``training`` → ``orchestration.plan`` → ``reporting`` → ``orchestration`` (``run_all``, ``sweep``)."""

"""The training library: the shared loop (``loop.train``), the scripts' command line (``cli``), the benchmarks
(``benchmarks/``), their models, tasks and metrics. Imports ``experiments.storage`` only."""

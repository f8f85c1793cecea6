"""Our methods inside other libraries' training loops (issue 31).

- ``methods.adapters.torchjd``: every Gram-based method (``GradientMethod.gram_based``: PCGrad, CAGrad, Nash-MTL,
  GCS, AuxiNash, MGDA, IMTL-G) as a TorchJD ``Weighting`` / ``GramianWeightedAggregator`` (``pip install -e
  ".[torchjd]"``), and ``paused(engine)`` for AuxiNash's ``meta_update`` beside TorchJD's autogram engine.
- ``methods.adapters.libmtl``: every method as a LibMTL ``AbsWeighting`` (LibMTL itself is not a dependency).

Neither module is imported here, so ``import methods.adapters`` needs neither library. Usage and limits:
methods/README.md, "Our methods in TorchJD and LibMTL".
"""

"""The lenses shipped with the package: data only (``<model alias>/<lens name>/`` folders), read through
:mod:`onejump.lenses.shipped` and made from a run folder by ``python -m onejump.experiment.ship``."""

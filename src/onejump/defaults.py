"""The data defaults, written once: the paper's sample on the offline default model.

Imported by the command line (which must stay light: no torch), the extraction, the model loader
and the experiment's ``DataArgs``.
"""

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CORPUS = "wikipedia-offline"
N_TRAIN = 9000
N_TEST = 3000
SEED = 0
TOKENS_PER_BATCH = 8192  # prefix tokens per extraction batch
SHARD_SIZE = 1024  # samples per store shard: the unit of resuming and of data-parallel work

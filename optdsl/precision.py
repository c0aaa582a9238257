"""Kept for checkpoints and pickles made before the optimizer layer moved to optdsl.optim:
they name ``optdsl.precision.RoundingSeeds``. The module is optdsl.optim.precision."""

from optdsl.optim.precision import *  # noqa: F401,F403
from optdsl.optim.precision import RoundingSeeds  # noqa: F401

"""Typed settings of the training tasks that are part of an experiment (the `ctr:` section).

They live here, apart from the tasks' data code, so that `recsys.experiment` can validate an
experiment (and serving can read what a model was trained with) without loading any data.
"""

from __future__ import annotations

from pydantic import Field

from recsys.config import StrictModel

#: the CTR history cap of runs whose config.yaml predates the `ctr:` section
DEFAULT_MAX_HISTORY = 2000


class CTRTaskConfig(StrictModel):
    """How the CTR task (recsys/tasks/ctr.py) cuts and batches histories.

    `max_history` is the training/serving contract: a sample's history is its `max_history` most
    recent behaviours, so target-relative positions run 1..max_history (DARE/TWIN/DIN embed them up
    to the model's `max_position`, which must be at least this). The run's config.yaml records it and
    serving reads it from there, so a model is not served on histories longer than it saw."""

    #: most recent behaviours kept per sample (training, validation, test, and serving's default)
    max_history: int = Field(DEFAULT_MAX_HISTORY, ge=1)
    #: with `train.bucket_by_length`: this many consecutive batches of the shuffled samples are
    #: sorted by history length together (tight padding), then the batch order is shuffled again
    bucket_pool: int = Field(8, ge=1)
    #: samples per evaluation batch (batches ordered by length; the metrics are order-free)
    eval_batch_size: int = Field(512, ge=1)

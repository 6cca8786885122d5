"""The one data contract, end to end (see README "Data contract").

Events (input, after a reader):
    user_id int64, item_id int64, timestamp int64 (unix seconds, or order index when the source
    only has order), optional category_id int64, event_type string, label int8.

Build outputs (one directory, written by `recsys data build`):
    vocab/users.parquet, vocab/items.parquet, vocab/categories.parquet
        raw_id int64 -> id int64 (dense 1..N; 0 is padding and never assigned)
    Per-user tables are folders of parquet parts (recsys/data/layout.py): part p of every table holds
    the same users, rows sorted by user inside a part; `layout.read_table` reads them in user order.
    sequences/          one row per user:
        user_id int64 (dense), items list<int64>, times list<int64>,
        categories list<int64> (when present), event_types list<string> (when present)
        each list time-ordered; ties keep input order.
    eval_negatives/     user_id, negatives list<int64>: NUM_EVAL_NEGATIVES items the user never
        interacted with, drawn once with the build seed (the sampled-100 protocol).
    ctr_samples/        split string (train/valid/test), user_id, prefix_length int32
        (history = items[:prefix_length]), item_id, category_id (when present), label int8.
    rejects/          parts of reason string, file string, line int64 (in that file), raw string: every
        input row that was not kept (recsys/data/stream_build.py; a duplicate's raw is its typed fields).
    manifest.json     written last (a build without it is unfinished): counts (read = kept + rejected, per reason), vocabulary sizes, length stats,
        config hash, versions, file checksums, `layout` (part count and how users were assigned).

Leave-one-out (next-item): per user, items[-1] is test, items[-2] validation, items[:-2] train;
users with fewer than 3 items keep everything in train and are not evaluated.
"""

from __future__ import annotations

import pyarrow as pa

# event columns
USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
CATEGORY = "category_id"
EVENT_TYPE = "event_type"
LABEL = "label"
REQUIRED_EVENT_COLUMNS = (USER, ITEM, TIME)
OPTIONAL_EVENT_COLUMNS = (CATEGORY, EVENT_TYPE, LABEL)

# sequence columns
SEQ_ITEMS = "items"
SEQ_TIMES = "times"
SEQ_CATEGORIES = "categories"
SEQ_EVENT_TYPES = "event_types"

# sample columns
SPLIT = "split"
PREFIX_LENGTH = "prefix_length"
NEGATIVES = "negatives"

PAD_ID = 0
NUM_EVAL_NEGATIVES = 100

# file names inside a build directory
VOCAB_DIR = "vocab"
USERS_VOCAB = "users.parquet"
ITEMS_VOCAB = "items.parquet"
CATEGORIES_VOCAB = "categories.parquet"
MANIFEST_FILE = "manifest.json"

EVENT_SCHEMA = pa.schema(
    [
        pa.field(USER, pa.int64(), nullable=False),
        pa.field(ITEM, pa.int64(), nullable=False),
        pa.field(TIME, pa.int64(), nullable=False),
    ]
)

VOCAB_SCHEMA = pa.schema([pa.field("raw_id", pa.int64(), nullable=False), pa.field("id", pa.int64(), nullable=False)])

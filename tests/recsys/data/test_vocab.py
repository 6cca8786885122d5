from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data.vocab import Vocabulary, load_vocabularies, vocabulary_size, write_vocabularies


def test_fit_encode_decode_roundtrip(tmp_path: Path) -> None:
    v = Vocabulary.fit(np.array([50, 7, 7, 900, -3]))
    assert len(v) == 4
    assert v.encode(np.array([-3, 7, 50, 900, 8])).tolist() == [1, 2, 3, 4, 0]  # sorted raw id; unknown -> 0
    assert v.decode(np.array([4, 1])).tolist() == [900, -3]
    with pytest.raises(ValueError):
        v.decode(np.array([0]))
    write_vocabularies({"users": v, "items": Vocabulary.fit([1, 2])}, tmp_path)
    loaded = load_vocabularies(tmp_path)
    assert set(loaded) == {"users", "items"} and loaded["users"] == v


def test_fit_is_order_independent() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10**12, size=1000)
    assert Vocabulary.fit(ids) == Vocabulary.fit(rng.permutation(ids))


def test_vocabulary_size_reads_the_footer_and_names_a_missing_file(tmp_path: Path) -> None:
    write_vocabularies({"items": Vocabulary.fit([5, 9, 11])}, tmp_path)  # writes <build>/vocab/
    assert vocabulary_size(tmp_path, "items") == 3
    assert vocabulary_size(tmp_path, "categories", required=False) == 0  # a build without categories
    with pytest.raises(FileNotFoundError, match="categories vocabulary not found"):
        vocabulary_size(tmp_path, "categories")

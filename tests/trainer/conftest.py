"""Fixtures of the trainer tier."""
import pytest
from tiny_trainer import encoded_dataset


@pytest.fixture()
def data(tmp_path):
    """A three-image encoded dataset with text conds (tests/support/tiny_trainer.py)."""
    return encoded_dataset(tmp_path)

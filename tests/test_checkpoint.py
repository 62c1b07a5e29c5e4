"""Checkpoints hold tensors and plain types only; anything else is refused on load."""

import random

import numpy as np
import pytest
import torch

from pointsparse import checkpoint
from pointsparse.training import load_model


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    checkpoint.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.standard_normal(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


class Payload:
    """Stands for what a hostile file could carry: unpickling it would call its reducer."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("extra", [Payload(), np.zeros(3)], ids=["object", "numpy array"])
def test_a_checkpoint_carrying_pickled_objects_is_refused(tmp_path, extra, capsys):
    path = tmp_path / "hostile.pt"
    torch.save({"model": {}, "config": {"model": "minkunet18", "cr": 0.25}, "extra": extra}, path)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="refuses it"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="hostile.pt"):
        load_model(path, "cpu")
    assert "this ran" not in capsys.readouterr().out


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "a" / "last.pt"
    checkpoint.save({"epoch": 1}, path)
    checkpoint.save({"epoch": 2}, path)
    assert checkpoint.load(path) == {"epoch": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]

"""``pointsparse convert`` and the checkpoint converters: round trips through every format on a
real model, safe reading of foreign files, and older checkpoints of our own."""

import pytest
import torch

import pointsparse as ps
from pointsparse import checkpoint
from pointsparse.cli import main
from pointsparse.convert import FORMATS, conv_geometry, convert_state_dict
from pointsparse.models import build_model


def minkunet():
    torch.manual_seed(0)
    return build_model("minkunet18", num_classes=19, in_channels=4, cr=0.25)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pointsparse"])
def test_cli_round_trip_through_each_format(tmp_path, fmt, capsys):
    model = minkunet()
    state = model.state_dict()
    checkpoint.save({"model": state, "config": {"model": "minkunet18", "cr": 0.25}, "epoch": 3}, tmp_path / "ours.pt")
    model_args = ["--model", "minkunet18", "--cr", "0.25"]
    assert main(["convert", str(tmp_path / "ours.pt"), str(tmp_path / "theirs.pt"), "--from", "pointsparse",
                 "--to", fmt, *model_args]) == 0
    assert "converted" in capsys.readouterr().out
    theirs = checkpoint.load(tmp_path / "theirs.pt")
    assert theirs["epoch"] == 3 and theirs["config"]["cr"] == 0.25            # the rest of the file is kept
    if fmt in ("torchsparse", "minkowski"):
        assert any(k.endswith(".kernel") for k in theirs["model"])
    else:
        assert any(v.dim() == 5 for v in theirs["model"].values())
    assert main(["convert", str(tmp_path / "theirs.pt"), str(tmp_path / "back.pt"), "--from", fmt,
                 "--to", "pointsparse", *model_args]) == 0
    back = checkpoint.load(tmp_path / "back.pt")["model"]
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]), key
    model.load_state_dict(back)


def test_a_torchsparse_state_dict_of_a_model_without_cubic_kernels_needs_the_model():
    layer = torch.nn.Sequential(ps.nn.SparseConv3d(2, 3, (3, 1, 2)))
    state = convert_state_dict(layer.state_dict(), "pointsparse", "torchsparse", *conv_geometry(layer))
    with pytest.raises(ValueError, match="not a cube"):
        convert_state_dict(state, "torchsparse", "pointsparse")
    back = convert_state_dict(state, "torchsparse", "pointsparse", *conv_geometry(layer))
    assert torch.equal(back["0.weight"], layer.state_dict()["0.weight"])


def test_spconv_zyx_axes_reverse_the_kernel():
    weight = torch.zeros(6, 1, 1)
    weight[1] = 1                                  # our offset index 1 of a (3, 2, 1) kernel: x = 1, y = 0, z = 0
    spconv = convert_state_dict({"c.weight": weight}, "pointsparse", "spconv", {"c": (3, 2, 1)}, axes="zyx")
    assert spconv["c.weight"].shape == (1, 1, 2, 3, 1)            # [C_out, kz, ky, kx, C_in]
    assert spconv["c.weight"][0, 0, 0, 1, 0] == 1


class Payload:
    """Any pickled object: loading it unpickled would run its class's code."""


def test_foreign_checkpoints_are_read_safely(tmp_path):
    torch.save({"state_dict": {"a.kernel": torch.zeros(27, 1, 1)}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.UnsafeCheckpointError):
        main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out.pt"), "--from", "torchsparse", "--to",
              "pointsparse"])
    assert not (tmp_path / "out.pt").exists()


def test_checkpoints_with_nested_batch_norms_still_load():
    model = minkunet()
    old = {}
    for key, value in model.state_dict().items():
        module, _, field = key.rpartition(".")
        nested = field in ("running_mean", "running_var", "num_batches_tracked") or (
            f"{module}.running_mean" in model.state_dict())
        old[f"{module}.module.{field}" if nested else key] = value.clone()
    fresh = build_model("minkunet18", num_classes=19, in_channels=4, cr=0.25)
    fresh.load_state_dict(old)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

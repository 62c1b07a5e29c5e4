"""Optional extras that fail to load, for any reason and not only by being absent: their tests skip
with the reason, and users get one error naming the extra, the reason and the fix. Stand-in
packages that raise on import play a machine without libusb (open3d) or with a broken CUDA build."""

import sys

import numpy as np
import pytest

from helpers import require_extra
from pointsparse import pointclouds
from pointsparse.cli import main
from pointsparse.extras import EXTRAS, ExtraUnavailableError, import_extra

LIBUSB = "libusb-1.0.so.0: cannot open shared object file: No such file or directory"


@pytest.fixture
def break_extra(tmp_path, monkeypatch):
    """break_extra(name, statement): the extra's top-level package replaced by one whose import
    runs ``statement`` (a raise), for the rest of the test."""
    def install(name: str, statement: str) -> None:
        top = EXTRAS[name].module.split(".")[0]
        package = tmp_path / "stand-ins" / top
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(statement + "\n")
        for module in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.syspath_prepend(str(package.parent))
    return install


@pytest.fixture
def open3d_without_libusb(break_extra):
    break_extra("open3d", f"raise ImportError({LIBUSB!r})")  # what open3d's wheel raises there


@pytest.mark.parametrize("name", sorted(EXTRAS))
@pytest.mark.parametrize("statement", ["raise ImportError('libfoo.so: cannot open shared object file')",
                                       "raise RuntimeError('CUDA driver version is insufficient')",
                                       "raise OSError('undefined symbol: _ZN3c10')"])
def test_an_extra_failing_inside_its_import_skips_its_tests_with_the_reason(break_extra, name, statement):
    break_extra(name, statement)
    reason = statement.split("'")[1]
    with pytest.raises(pytest.skip.Exception, match=f"{name}.*{reason}.*Fix: pip install"):
        require_extra(name)
    with pytest.raises(ExtraUnavailableError, match=f"Writing maps needs the optional extra {name}.*{reason}"):
        import_extra(name, "Writing maps")


def test_point_cloud_files_without_open3d_name_the_extra_and_the_system_package(open3d_without_libusb, tmp_path):
    (tmp_path / "scan.pcd").write_bytes(b"# .PCD v0.7\n")
    with pytest.raises(ExtraUnavailableError, match=r"Reading \.pcd files needs the optional extra open3d.*"
                                                    r"libusb-1\.0\.so\.0.*apt install libusb-1\.0-0"):
        pointclouds.read_point_cloud(tmp_path / "scan.pcd")
    points = np.zeros((3, 4), np.float32)
    labels = np.zeros(3, np.int64)
    with pytest.raises(ExtraUnavailableError, match=r"Writing \.ply files needs the optional extra open3d"):
        pointclouds.write_prediction(tmp_path / "pred.ply", points, labels)
    # KITTI files need no extra.
    points.tofile(tmp_path / "scan.bin")
    np.testing.assert_array_equal(pointclouds.read_point_cloud(tmp_path / "scan.bin"), points)
    assert pointclouds.write_prediction(tmp_path / "pred.label", points, labels).stat().st_size == 3 * 4


def test_predict_ply_without_open3d_stops_with_the_fix_before_loading_the_model(open3d_without_libusb, tmp_path):
    # The checkpoint does not exist: the extra is checked before any work, so its error comes first.
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(tmp_path / "absent.pt"), "--ply", "--out", str(tmp_path / "pred")])
    message = str(stop.value.code)
    assert message.startswith("error: predict --ply needs the optional extra open3d")
    assert LIBUSB in message and "apt install libusb-1.0-0" in message and "Traceback" not in message

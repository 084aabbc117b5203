"""`autr export onnx` output folders are ordinary directories: their mode follows the umask like mkdir's
(tempfile.mkdtemp, which the export writes into before publishing it in one step, makes them 0700)."""
import os
import stat

import pytest

from autr.export.onnx_export import prepare_out_dir, publish


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o002, 0o775)])
def test_published_export_directory_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out, tmp = prepare_out_dir(tmp_path / "export")
        (tmp / "model.json").write_text("{}")
        publish(tmp, out)
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    # re-export over it: the replacement is an ordinary directory too
    old = os.umask(umask)
    try:
        out2, tmp2 = prepare_out_dir(out)
        (tmp2 / "model.json").write_text("{}")
        publish(tmp2, out2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out2.stat().st_mode) == mode

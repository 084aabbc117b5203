"""The `autr` command line: fast start, light imports, clear errors."""
import json
import subprocess
import sys

from click.testing import CliRunner

from autr.cli import main


def test_import_autr_and_cli_do_not_load_torch():
    code = ("import sys, autr, autr.cli, autr.presets; "
            "heavy = [m for m in ('torch', 'timm', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("presets", "data", "train", "eval", "export", "stream", "demo"):
        assert f"  {command} " in result.output, command


def test_room_commands_load_on_use_and_stay_light():
    code = ("import sys; from click.testing import CliRunner; from autr.cli import main; "
            "r = CliRunner().invoke(main, ['stream', '--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(main, ['export', 'onnx', '--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'cv2', 'av') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_table_and_json(tmp_path):
    out = tmp_path / "presets.json"
    result = CliRunner().invoke(main, ["presets", "--preset", "tiny", "--size", "64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())["presets"][0]
    assert row["preset"] == "tiny" and row["backbone"] == "resnet10t"
    assert 1 < row["params_m"] < 20 and row["gflops_per_frame"] > 0
    assert f"{row['params_m']:.2f}" in result.output


def test_presets_measure_reports_latency(tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(main, ["presets", "--preset", "tiny", "--size", "64", "--measure",
                                       "--iters", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lat = json.loads(out.read_text())["presets"][0]["cpu_latency_ms"]
    assert set(lat) == {"1", "5"} and lat["5"]["median"] > 0


def test_unknown_preset_is_one_clear_error():
    result = CliRunner().invoke(main, ["presets", "--preset", "huge"])
    assert result.exit_code == 2
    assert ("unknown preset(s) huge; choose from paper-r50, paper-pvt, small, tiny, tpavi-r50, tpavi-pvt, "
            "tpavi-small, tpavi-tiny") in result.output
    assert "Traceback" not in result.output

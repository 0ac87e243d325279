"""scripts/bench_one_stage.py: one tiny run writes its table section into the latency README, a second run
replaces that section and keeps everything else (the Faster R-CNN tables of bench_detection.py)."""

from tests.script_loader import load_script


def script():
    return load_script("bench_one_stage")


def test_tiny_run_writes_and_replaces_its_section(tmp_path):
    bench = script()
    readme = tmp_path / "README.md"
    readme.write_text("# Detection latency\n\nold table\n")
    args = ["--models", "fcos_lite0", "--sizes", "64", "--threads", "1", "--reps", "1", "--warmup", "0",
            "--out", str(readme)]
    bench.main(args)
    bench.main(args)
    text = readme.read_text()
    assert text.startswith("# Detection latency\n\nold table\n")
    assert text.count(bench.START) == 1 and text.count(bench.END) == 1
    row = next(line for line in text.splitlines() if line.startswith("| FCOS Lite0"))
    assert "| 64 | 64x85 |" in row and "max diff" in row  # ONNX boxes compared with eager

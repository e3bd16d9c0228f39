"""benchmarks/gpu.py, the script benchmarks/gpu.sh runs on a GPU, on CPU at tiny sizes."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_on_cpu_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = module.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "gpu.md")])
    assert len(lines) == 2 + 2 * 3  # header, then training and two decode rows per model
    assert "training tokens/s (MFU)" in lines[2] and "decode tokens/s, batch 16" in lines[4]
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU benchmark")

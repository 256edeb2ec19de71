"""Start-up cost of the `embeval` command as whole processes: help, mistakes, a small run.

    python benchmarks/bench_startup.py                       # this interpreter's embeval
    python benchmarks/bench_startup.py --exe A/bin/embeval --exe B/bin/embeval   # side by side

For each executable and command: the median wall time of ``--repeat`` warm runs, and one cold
run: the first run after ``pip install``, which has compiled the bytecode but not numba's
kernels (their cache files are removed first). With two executables it prints the ratio B / A.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
Q = ROOT / "sample_data/digits/query.safetensors"
G = ROOT / "sample_data/digits/gallery.safetensors"
COMMANDS = {
    "--help": ["--help"],
    "cmc --help": ["cmc", "--help"],
    "typo (cmcc)": ["cmcc"],
    "wrong path": ["cmc", "missing.safetensors", str(G)],
    "sample cmc": ["cmc", str(Q), str(G), "-k", "1", "5", "10"],
}


def wall(exe: str, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def package_dir(exe: str) -> Path:
    """The embeval package the executable imports (its interpreter is the script's shebang)."""
    python = Path(exe).read_text().splitlines()[0].removeprefix("#!").split()
    out = subprocess.run([*python, "-c", "import embeval, os; print(os.path.dirname(embeval.__file__))"],
                         capture_output=True, text=True, check=True, cwd="/")  # not ./embeval
    return Path(out.stdout.strip())


def clear_caches(pkg: Path) -> None:
    """Remove numba's on-disk kernel cache (``*.nbi`` / ``*.nbc`` beside the bytecode)."""
    for pattern in ("*.nbi", "*.nbc"):
        for f in pkg.rglob(pattern):
            f.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", action="append", help="embeval executables (default: on PATH)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    exes = args.exe or [str(Path(sys.executable).parent / "embeval")]
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for exe in exes:
        pkg = package_dir(exe)
        rows = {}
        for name, cmd in COMMANDS.items():
            clear_caches(pkg)
            cold = wall(exe, cmd)
            wall(exe, cmd)  # caches written: what follows is warm
            warm = statistics.median(wall(exe, cmd) for _ in range(args.repeat))
            rows[name] = (cold, warm)
        results[exe] = rows
    head = "".join(f" | {Path(e).parent.parent.name or e} cold, warm" for e in exes)
    print(f"command{head}" + (" | ratio warm B/A" if len(exes) == 2 else ""))
    for name in COMMANDS:
        cells = "".join(f" | {results[e][name][0]:.2f} s, {results[e][name][1]:.2f} s" for e in exes)
        ratio = (f" | {results[exes[1]][name][1] / results[exes[0]][name][1]:.2f}"
                 if len(exes) == 2 else "")
        print(f"{name}{cells}{ratio}")


if __name__ == "__main__":
    main()

"""DICOM de-identification throughput: mipflow beside dicognito and a plain pydicom read+write.

Two corpora, built in a temporary folder from files shipped with pydicom, each
instance carrying the identifying values the test suite injects
(``tests/mipflow/node/imaging/conftest.py``: top level, nested sequences, private
tags, overlay and curve groups):

* ``small``: N copies of small shipped files (CT_small, MR_small, ...);
* ``ct512``: N synthetic CT slices 512x512 int16 (CT_small's header, new pixel data).

For each corpus, in the same run: ``python -m dicognito -o OUT IN`` (PyPI
``dicognito==0.19.0``, see ``bench/requirements.txt``), ``pydicom.dcmread`` +
``save_as`` of every file (the floor) and mipflow's ``Deidentifier.file``.
Printed: files/s, MB/s, the ratios (target: mipflow >= 2x dicognito files/s and
within 1.5x of read+write, i.e. ratio to read+write >= 0.67), and for each
tool the injected identifying values that survive in its output files.

The in-process tools (read+write, mipflow) are timed in CPU time of this
process (``time.process_time``: the machine is shared, wall clock is noisy),
``--rounds`` times interleaved, and the median round counts; dicognito runs in
a child process and is timed by the wall clock.  ``--no-dicognito`` leaves it
out (it need not be installed then).

Usage: ``python bench/dicom.py [--files 500] [--rounds 3] [--no-dicognito] [--keep]``
"""
from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

SMALL_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm")
KEY = bytes(range(32))


def _inject(ds, i: int):
    from tests.mipflow.node.imaging.conftest import inject_phi

    inject_phi(ds)
    ds.SOPInstanceUID = f"1.2.999.77.{i}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def build_small(folder: Path, n: int) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    templates = [pydicom.dcmread(get_testdata_file(name, download=False)) for name in SMALL_FILES]
    folder.mkdir(parents=True)
    for i in range(n):
        ds = _inject(copy.deepcopy(templates[i % len(templates)]), i)
        ds.save_as(folder / f"IM{i:05d}.dcm", enforce_file_format=True)


def build_ct512(folder: Path, n: int) -> None:
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[-256:256, -256:256]
    body = (xx ** 2 + yy ** 2) < 200 ** 2
    for i in range(n):
        ds = _inject(copy.deepcopy(base), i)
        pixels = np.where(body, 1040, 24).astype(np.int16) + rng.integers(-20, 20, (512, 512), dtype=np.int16)
        ds.Rows, ds.Columns = 512, 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        ds.ImagePositionPatient = [-158.0, -179.0, -6.6 + 1.25 * i]
        ds.save_as(folder / f"CT{i:05d}.dcm", enforce_file_format=True)


def run_readwrite(src: Path, out: Path) -> None:
    import pydicom

    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(src.iterdir()):
            pydicom.dcmread(path).save_as(out / path.name)


def run_mipflow(src: Path, out: Path) -> None:
    from mipflow.node.imaging.deidentify import Deidentifier
    from mipflow.node.imaging.options import DeidOptions

    out.mkdir(parents=True)
    engine = Deidentifier(KEY, DeidOptions(retain_longitudinal_modified_dates=True))
    for path in sorted(src.iterdir()):
        outcome = engine.file(path, out / path.name)
        if outcome.reason is not None:
            raise SystemExit(f"mipflow quarantined {path.name}: {outcome.reason}")


def run_dicognito(src: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "dicognito", "--quiet", "-o", str(out), str(src)], check=True)


def dicognito_startup() -> float:
    """Seconds a fresh interpreter needs to import dicognito's command line (median of 3)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dicognito.__main__"], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def timed(fn, src: Path, out: Path) -> float:
    """Wall-clock seconds of ``fn(src, out)`` (for tools run in a child process)."""
    start = time.perf_counter()
    fn(src, out)
    return time.perf_counter() - start


def cpu_timed(fn, src: Path, out: Path) -> float:
    """CPU seconds of this process spent in ``fn(src, out)`` (user + system)."""
    start = time.process_time()
    fn(src, out)
    return time.process_time() - start


def survivors(folder: Path) -> dict[str, int]:
    """Injected identifying value -> number of output files that still contain it.

    Whole injected values only: name parts (``ANNA``, ``CARL`` ...) are left out, since a
    tool that writes random replacement names can produce them by chance.
    """
    from tests.mipflow.node.imaging.conftest import PHI_TOP, phi_strings

    whole = {v for _, v in PHI_TOP}
    values = sorted(v for v in set(phi_strings()) if v in whole or "^" in v or not v.isalpha())
    counts = dict.fromkeys(values, 0)
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for v in values:
                if v.encode() in data:
                    counts[v] += 1
    return {v: c for v, c in counts.items() if c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of read+write and mipflow (median counts)")
    parser.add_argument("--no-dicognito", action="store_true",
                        help="leave dicognito out (time read+write and mipflow only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    with_dicognito = not args.no_dicognito
    if with_dicognito:
        try:
            import dicognito  # noqa: F401
        except ImportError:
            raise SystemExit("dicognito is not installed: pip install -r bench/requirements.txt "
                             "(or run with --no-dicognito)")
    import pydicom  # noqa: F401 - in-process tools are timed warm (imports done)

    import mipflow.node.imaging.deidentify  # noqa: F401

    startup = 0.0
    if with_dicognito:
        startup = dicognito_startup()
        print(f"dicognito interpreter + import startup: {startup:.2f}s per run "
              "(subtracted in 'net')")
    work = Path(tempfile.mkdtemp(prefix="mipflow-bench-dicom-"))
    try:
        for corpus, build in (("small", build_small), ("ct512", build_ct512)):
            src = work / corpus / "in"
            build(src, args.files)
            mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
            results = {}
            rounds: dict[str, list[float]] = {"read+write": [], "mipflow": []}
            for r in range(max(1, args.rounds)):
                for name, fn in (("read+write", run_readwrite), ("mipflow", run_mipflow)):
                    out = work / corpus / f"{name}-{r}"
                    rounds[name].append(cpu_timed(fn, src, out))
                    if r:
                        shutil.rmtree(out)
            for name in rounds:
                results[name] = (sorted(rounds[name])[len(rounds[name]) // 2],
                                 survivors(work / corpus / f"{name}-0"))
            if with_dicognito:
                out = work / corpus / "dicognito"
                results["dicognito"] = (timed(run_dicognito, src, out), survivors(out))
            print(f"\n== {corpus}: {args.files} files, {mb:.1f} MB ==")
            for name, (seconds, left) in results.items():
                clock = "wall" if name == "dicognito" else "cpu"
                print(f"{name:>14}: {args.files / seconds:8.1f} files/s {mb / seconds:8.1f} MB/s "
                      f"({seconds:.2f}s {clock}, {1e3 * seconds / args.files:.3f} ms/file); "
                      f"injected values surviving: {len(left)}")
            ours = results["mipflow"][0]
            vs_floor = results["read+write"][0] / ours
            print(f"mipflow / read+write files/s: {vs_floor:.2f}x (target >= 0.67, i.e. within 1.5x) "
                  f"{'OK' if vs_floor >= 1 / 1.5 else 'MISSED'}")
            if not with_dicognito:
                left = results["mipflow"][1]
                if left:
                    shown = ", ".join(f"{v!r} in {c}" for v, c in sorted(left.items()))
                    print(f"  mipflow leaves: {shown}")
                continue
            net = max(results["dicognito"][0] - startup, 1e-9)
            print(f"{'dicognito net':>14}: {args.files / net:8.1f} files/s {mb / net:8.1f} MB/s ({net:.2f}s)")
            vs_dicognito = results["dicognito"][0] / ours
            vs_net = net / ours
            print(f"mipflow / dicognito files/s: {vs_dicognito:.2f}x wall, {vs_net:.2f}x net of startup "
                  f"(target >= 2; mipflow in CPU time) {'OK' if vs_net >= 2 else 'MISSED'}")
            for name in ("dicognito", "mipflow"):
                left = results[name][1]
                if left:
                    shown = ", ".join(f"{v!r} in {c}" for v, c in sorted(left.items()))
                    print(f"  {name} leaves: {shown}")
    finally:
        if args.keep:
            print(f"\nfiles kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

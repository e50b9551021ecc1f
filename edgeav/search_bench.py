"""``python -m edgeav.search_bench``: how long exact search takes over a day (and more) of one camera.

Builds an index of N synthetic windows in a temporary directory with the real
:class:`~edgeav.index.IndexWriter` (24 h of one camera at a 0.5 s hop is ~172,800 windows), then
times the real code paths: :func:`~edgeav.index.read_index` (load, warm page cache: the file
was just written) and one query (:func:`~edgeav.search.similarity` + :func:`~edgeav.search.top_moments`,
median of several), and reports the memory the loaded index and a query take (tracemalloc peak,
numpy's allocations included; and the load's peak RSS growth in a fresh process, which also counts
mapped file pages). From the measured per-window cost it extrapolates where one query
passes an interactive budget: past that, an approximate nearest-neighbour index (FAISS: IVF-PQ or
HNSW) takes over from the matrix product.

The windows are "random but realistic": unit vectors drawn around a few hundred scene/event
centres, with the camera staying near one centre for a while (consecutive windows are similar,
as in real footage, so top_moments has runs to merge), audio and video on related centres.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from edgeav.index import IndexedWindows, IndexWriter, read_index
from edgeav.search import similarity, top_moments

HOP_S = 0.5
WINDOW_S = 1.0
DIM = 128            # the shipped bundle's embedding size
CENTRES = 300
CHUNK = 8192         # windows per IndexWriter.add call
QUERY_BUDGET_S = 0.1  # an interactive search (and one report entry) should stay under this


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_windows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` audio and video embeddings: runs of windows near one of ``CENTRES`` centres, plus noise."""
    ca, cv = _unit(rng.standard_normal((CENTRES, DIM))), _unit(rng.standard_normal((CENTRES, DIM)))
    run_len = rng.integers(4, 60, size=n // 4 + 1)  # 2 s to 30 s in one scene or event
    which = np.repeat(rng.integers(0, CENTRES, size=len(run_len)), run_len)[:n]
    audio = _unit(ca[which] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32))
    video = _unit(cv[which] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32))
    return audio, video


def build(directory: Path, n: int, seed: int = 0) -> float:
    """Write ``n`` windows of one camera to an index in ``directory``; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    w = IndexWriter(directory, DIM, "search-bench")
    src = w.source_id("bench-cam", "")
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        a, v = synthetic_windows(m, rng)
        ts = (start + np.arange(m)) * HOP_S
        w.add(src, ts, ts + WINDOW_S, a, v)
    w.close()
    return time.perf_counter() - t0


def _query(index: IndexedWindows, i: int, mode: str, top: int) -> tuple[float, int]:
    """One search for the moments like indexed window ``i`` (as `search --event` does); seconds, moments."""
    t0 = time.perf_counter()
    moments = top_moments(index, similarity(index, index.audio[i], index.video[i], mode), top,
                          exclude=(int(index.source[i]), float(index.t_start[i]), float(index.t_end[i])))
    return time.perf_counter() - t0, len(moments)


# Run in a fresh interpreter so its high-water mark is the load's alone. /proc's VmHWM, not ru_maxrss: Linux
# carries ru_maxrss across fork+exec, so a child would report its parent's peak.
_RSS_PROBE = ("import sys\n"
              "from edgeav.index import read_index\n"
              "def vm(key):\n"
              "    for line in open('/proc/self/status'):\n"
              "        if line.startswith(key + ':'):\n"
              "            return int(line.split()[1]) * 1024\n"
              "before = vm('VmRSS')\n"
              "i = read_index(sys.argv[1])\n"
              "print(vm('VmHWM') - before, i.audio.nbytes + i.video.nbytes + i.t_start.nbytes + i.t_end.nbytes"
              " + i.source.nbytes)\n")


def load_peak_rss(directory: Path) -> tuple[int, int]:
    """(peak RSS growth while ``read_index`` loads ``directory``, bytes of the loaded arrays), in a fresh process.

    RSS counts what tracemalloc cannot: pages of memory-mapped files and allocations outside numpy.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(directory)], capture_output=True, text=True,
                          timeout=600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"read_index in a fresh process failed: {proc.stderr.strip()}")
    grew, loaded = proc.stdout.split()
    return int(grew), int(loaded)


def measure(n: int, queries: int = 7, top: int = 10) -> dict[str, float]:
    """Build, load and query an index of ``n`` windows; seconds and bytes."""
    with tempfile.TemporaryDirectory(prefix="edgeav-search-bench-") as tmp:
        d = Path(tmp)
        write_s = build(d, n)
        disk = sum(f.stat().st_size for f in d.iterdir())
        t0 = time.perf_counter()
        index = read_index(d)
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        times: dict[str, list[float]] = {"joint": [], "audio": []}
        for mode in times:
            for _ in range(queries):
                times[mode].append(_query(index, int(rng.integers(0, n)), mode, top)[0])
        # Memory apart from the timings (tracemalloc slows Python down): a second load and one query.
        del index
        tracemalloc.start()
        index = read_index(d)
        _, load_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        _query(index, 0, "joint", top)
        query_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        resident = index.audio.nbytes + index.video.nbytes + 2 * index.t_start.nbytes + index.source.nbytes
        del index
        rss_peak, _ = load_peak_rss(d)
    return {"windows": n, "hours": n * HOP_S / 3600, "write_s": write_s, "disk_bytes": disk, "load_s": load_s,
            "load_peak_bytes": load_peak, "load_rss_bytes": rss_peak, "index_bytes": resident,
            "query_joint_s": statistics.median(times["joint"]), "query_audio_s": statistics.median(times["audio"]),
            "query_peak_bytes": query_peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeav.search_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[172_800, 1_000_000],
                    help="index sizes to measure (default: 24 h of one camera at a 0.5 s hop, and 1,000,000)")
    ap.add_argument("--queries", type=int, default=7, help="queries per mode; the median is printed (default 7)")
    args = ap.parse_args(argv)
    if any(n < 12 for n in args.windows):
        ap.error("--windows: each size must be at least 12")
    mib = 1024 * 1024
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default (one per core)"
    print(f"exact search, {DIM}-d audio + video embeddings, one camera at a {HOP_S} s hop; "
          f"numpy {np.__version__}, BLAS threads {blas}, {os.cpu_count()} CPUs, warm page cache")
    print(f"{'windows':>10} {'hours':>7} {'disk MiB':>9} {'load s':>7} {'load peak MiB':>13} {'load RSS MiB':>12} "
          f"{'joint query ms':>14} {'audio query ms':>14} {'query peak MiB':>14}")
    rows = []
    for n in args.windows:
        r = measure(n, args.queries)
        rows.append(r)
        print(f"{n:>10,} {r['hours']:>7.1f} {r['disk_bytes'] / mib:>9.0f} {r['load_s']:>7.2f} "
              f"{r['load_peak_bytes'] / mib:>13.0f} {r['load_rss_bytes'] / mib:>12.0f} "
              f"{r['query_joint_s'] * 1e3:>14.1f} {r['query_audio_s'] * 1e3:>14.1f} "
              f"{r['query_peak_bytes'] / mib:>14.0f}", flush=True)
    big = max(rows, key=lambda r: r["windows"])
    per_window = big["query_joint_s"] / big["windows"]
    limit = QUERY_BUDGET_S / per_window
    print(f"joint query cost {per_window * 1e9:.1f} ns per window: one query passes {QUERY_BUDGET_S * 1e3:.0f} ms "
          f"at about {limit:,.0f} windows ({limit * HOP_S / 86400:.0f} camera-days); the loaded index needs "
          f"{big['index_bytes'] / big['windows']:.0f} bytes per window in RAM "
          f"({big['index_bytes'] / big['windows'] * limit / 2**30:.1f} GiB there). Past that (or past the RAM), "
          "an approximate nearest-neighbour index (FAISS IVF-PQ or HNSW) takes over.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

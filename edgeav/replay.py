"""``edgeav replay``: the daemon's pipeline fed by files on their own clock.

Outputs (design.md section 6): ``--out`` events and alerts as JSON lines, ``--windows``
one line per window. Outputs are written to a temporary file beside the target and
renamed when the run completes, so a failed run never leaves a partial file that looks
complete. Deterministic: the same footage and bundle give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgeav.errors import UserError
from edgeav.records import dumps


@dataclass
class JsonLinesSink:
    """Writes the chosen record kinds as JSON lines to an open file."""

    out: IO[str]
    kinds: frozenset[str]

    def window(self, record: dict[str, Any]) -> None:
        if "window" in self.kinds:
            self.out.write(dumps(record) + "\n")

    def event(self, record: dict[str, Any]) -> None:
        if "event" in self.kinds:
            self.out.write(dumps(record) + "\n")

    def alert(self, record: dict[str, Any]) -> None:
        if "alert" in self.kinds:
            self.out.write(dumps(record) + "\n")


@dataclass
class SummarySink:
    """Keeps what the human summary needs: event starts and alerts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def window(self, record: dict[str, Any]) -> None:
        pass

    def event(self, record: dict[str, Any]) -> None:
        if record["phase"] == "end":
            self.events.append(record)

    def alert(self, record: dict[str, Any]) -> None:
        self.alerts.append(record)


@contextlib.contextmanager
def atomic_output(path: str | None) -> Iterator[IO[str] | None]:
    """A text file that appears at ``path`` only if the block completes."""
    if path is None:
        yield None
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target}: is a directory, expected an output file path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or Path("."))
    except OSError as exc:
        raise UserError(f"{target}: cannot write here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output file gets the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fmt_t(t: float) -> str:
    m, s = divmod(t, 60.0)
    return f"{int(m):02d}:{s:05.2f}"


def print_summary(footage: Path, duration: float, stats: Any, summary: SummarySink, out: IO[str]) -> None:
    """The human-readable account of one file: events by kind, then every alert."""
    out.write(f"{footage}: {duration:.1f} s, {stats.windows} windows")
    if stats.missing_audio or stats.missing_video:
        out.write(f" ({stats.missing_audio} without audio, {stats.missing_video} without video)")
    out.write("\n")
    by_label: dict[str, int] = {}
    for e in summary.events:
        by_label[e["label"]] = by_label.get(e["label"], 0) + 1
    if by_label:
        kinds = ", ".join(f"{n} {label}" for label, n in sorted(by_label.items(), key=lambda kv: (-kv[1], kv[0])))
        out.write(f"  events: {kinds}\n")
        for e in summary.events:
            out.write(f"    {_fmt_t(e['t_start'])}-{_fmt_t(e['t_end'])}  {e['label']:<12} score {e['score']:.2f}\n")
    else:
        out.write("  events: none\n")
    if summary.alerts:
        out.write(f"  alerts: {len(summary.alerts)}\n")
        for a in summary.alerts:
            out.write(f"    {_fmt_t(a['t_start'])}-{_fmt_t(a['t_end'])}  anomaly      score {a['score']:.3f} "
                      f"(threshold {a['threshold']:.3f})\n")
    else:
        out.write("  alerts: none\n")


def run(args: argparse.Namespace) -> int:
    from edgeav import media
    from edgeav.reader import FileReader

    if args.embed_threads is not None and args.embed_threads < 0:
        raise UserError(f"--embed-threads must be 0 or more, got {args.embed_threads}")
    files = media.find_footage(args.footage)
    config = None
    if args.config:
        from edgeav.config import load_config

        config = load_config(args.config)
    models = args.models or (config.models.bundle if config is not None else None)
    spec = _window_spec(models)
    infos = [media.probe(f, require_audio=False) for f in files]  # fail on bad footage before writing anything
    # The first file starts decoding now, beside the loading of the onnxruntime sessions (~0.1 s of CPU in
    # the main thread) instead of after it: decoding is the floor of replay, the sooner it starts the better.
    first = FileReader(files[0], spec, info=infos[0], depth=2 * args.batch) if files else None
    try:
        return _replay(args, config, models, files, infos, first)
    finally:
        if first is not None:
            first.close()


def _window_spec(models: str | Path | None) -> Any:
    """The bundle's window spec from its manifest alone (nothing verified or loaded yet: load_bundle does that)."""
    from edgeav.bundle import MANIFEST_NAME, read_manifest, resolve_bundle_dir, window_spec_from_manifest

    d = resolve_bundle_dir(models)
    return window_spec_from_manifest(read_manifest(d), where=str(d / MANIFEST_NAME))


def _replay(args: argparse.Namespace, config: Any, models: str | Path | None, files: list[Path], infos: list[Any],
            first: Any) -> int:
    from edgeav.bundle import load_bundle
    from edgeav.pipeline import CameraPipeline, decision_params, run_file

    events, anomaly = decision_params(config)
    cpu_t0 = time.thread_time()
    bundle = load_bundle(models, threads=args.threads)
    if first is not None:
        first.other_cpu += time.thread_time() - cpu_t0
        if first.spec != bundle.window_spec:  # the manifest changed under us: start that file again
            first.close()
            first = None
    publisher = None
    if config is not None and config.mqtt is not None:
        # The daemon's payloads through the daemon's durable outbox (issue 10).
        from edgeav.mqtt import MqttSink, publisher_from_config

        publisher = publisher_from_config(config, [args.camera or f.stem for f in files], helper=True)
        publisher.start()  # connects in the background while the footage is processed
    show_progress = sys.stderr.isatty() and not args.quiet
    index = None
    if args.index:
        from edgeav.index import IndexWriter

        index = IndexWriter(args.index, bundle.embedding_size, bundle.bundle_id)
    stages = ("decode", "preprocess", "embed", "decide")
    totals: dict[str, Any] = {"windows": 0, "events": 0, "alerts": 0, "frames_converted": 0,
                              "times": dict.fromkeys(stages, 0.0), "cpu": dict.fromkeys(stages, 0.0),
                              "run_cpu": 0.0, "files_split": 0}
    reports: list[Any] = []  # one ReportSink per file with --report
    # Batches embed on every core, ahead of the decisions (same outputs): once the decoder is done, the
    # last batches would otherwise embed on one core while the others idle (on 2 cores, 0.2 s of a 1 s replay).
    embed_threads = args.embed_threads
    if embed_threads is None:
        from edgeav.media import usable_cores

        embed_threads = usable_cores() if usable_cores() > 1 else 0

    with atomic_output(args.out) as out_f, atomic_output(args.windows) as win_f, \
            atomic_output(args.report) as report_f:
        for path, info in zip(files, infos, strict=True):
            sinks: list[Any] = []
            summary = SummarySink()
            sinks.append(summary)
            if args.report:
                from edgeav.report import ReportSink

                reports.append(ReportSink(args.camera or path.stem, path, info.duration))
                sinks.append(reports[-1])
            if out_f is not None:
                sinks.append(JsonLinesSink(out_f, frozenset({"event", "alert"})))
            if win_f is not None:
                sinks.append(JsonLinesSink(win_f, frozenset({"window"})))
            if publisher is not None:
                sinks.append(MqttSink(publisher, state=False))
            camera = args.camera or path.stem
            pipeline = CameraPipeline(camera, bundle, sinks, events=events, anomaly=anomaly,
                                      source_id=str(path), batch_size=args.batch, index=index,
                                      embed_threads=embed_threads)
            if args.report:
                reports[-1].threshold = pipeline.decider.params.threshold if pipeline.decider else None
                reports[-1].index_source = index.source_id(camera, str(path)) if index is not None else None
            bar = None
            if show_progress:
                from tqdm import tqdm

                bar = tqdm(total=round(info.duration, 1), unit="s", desc=path.name, leave=False)

            def progress(t: float, bar: Any = bar) -> None:
                if bar is not None:
                    bar.update(max(0.0, round(t - bar.n, 1)))

            reader, first = (first, None) if first is not None and first.path == path else (None, first)
            stats = run_file(path, pipeline, progress=progress, reader=reader)
            if bar is not None:
                bar.close()
            if not args.quiet:
                print_summary(path, info.duration, stats, summary, sys.stdout)
            for key in ("windows", "events", "alerts", "frames_converted"):
                totals[key] += getattr(stats, key)
            for key, value in stats.times.as_dict().items():
                totals["times"][key] += value
            for key, value in stats.cpu.as_dict().items():
                totals["cpu"][key] += value
            totals["run_cpu"] += stats.run_cpu
            totals["files_split"] += stats.split_at is not None
        if report_f is not None:  # after every file, so similar moments can come from all of them
            from edgeav.report import render

            report_f.write(render(reports, Path(args.index) if args.index else None, bundle.window_spec.sample_rate))
    if index is not None:
        index.close()
    if publisher is not None:
        _drain(publisher, args.drain_timeout)
    if args.stats:
        with atomic_output(args.stats) as f:
            assert f is not None
            totals["run_cpu"] = round(totals["run_cpu"], 4)
            # Process CPU from start-up to here (imports, bundle loading, every file), for `edgeav bench`.
            totals["process_cpu"] = round(time.process_time(), 4)
            json.dump(totals, f, indent=1)
    return 0


def _drain(publisher: Any, timeout_s: float) -> None:
    """Wait for the broker to acknowledge what this run queued, then say what (if anything) is left."""
    left = publisher.wait_drained(timeout_s)
    publisher.stop()
    publisher.outbox.close()
    if left:
        sys.stderr.write(f"edgeav: mqtt: {left} message(s) remain queued in {publisher.outbox.path} after "
                         f"{timeout_s:g} s; the next run with the same storage.state_dir delivers them\n")
    else:
        sys.stderr.write("edgeav: mqtt: every event and alert was delivered to the broker\n")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="run the pipeline over recorded footage: events, alerts, per-window scores",
        description="Run the daemon's pipeline over footage files (or directories of them) on their own clock. "
                    "Deterministic: the same input gives byte-identical outputs.")
    p.add_argument("footage", nargs="+", metavar="FOOTAGE", help="footage files or directories")
    p.add_argument("--models", metavar="BUNDLE_DIR",
                   help="model bundle (default: the config's models.bundle, else the shipped one)")
    p.add_argument("--out", metavar="EVENTS.jsonl", help="write events and alerts as JSON lines")
    p.add_argument("--windows", metavar="WINDOWS.jsonl", help="write one JSON line per window")
    p.add_argument("--config", metavar="FILE", help="edgeav config (events and anomaly sections)")
    p.add_argument("--camera", metavar="NAME", help="camera name in the records (default: the footage's stem)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model (default 1)")
    p.add_argument("--batch", type=int, default=16, help="windows per inference batch (default 16)")
    p.add_argument("--embed-threads", type=int, default=None, metavar="N",
                   help="threads embedding batches ahead of the decisions (default: one per core on a multi-core "
                        "box; 0: embed in the deciding thread); the outputs are the same either way")
    p.add_argument("--quiet", action="store_true", help="print no summary and no progress")
    p.add_argument("--index", metavar="DIR", help="append every window's embeddings to this index (edgeav search)")
    p.add_argument("--report", metavar="REPORT.html",
                   help="write one self-contained HTML report: score timeline, alerts with frame and spectrogram, "
                        "and with --index each alert's most similar earlier moments")
    p.add_argument("--stats", metavar="STATS.json",
                   help="write counts, per-stage wall times (times) and thread CPU (cpu), the CPU of the files' "
                        "processing (run_cpu, FFmpeg's decoder threads included) and of the whole process as JSON")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="with an mqtt config section: wait at most S seconds for the broker to acknowledge "
                        "everything queued (default 30); what is left is delivered by the next run")
    p.set_defaults(func=run)

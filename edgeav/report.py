"""``edgeav replay --report REPORT.html``: the picture a person wants after a night of footage.

One self-contained HTML file (inline CSS, inline SVG, images as ``data:`` URIs, no script
or font fetched from anywhere) so it opens offline, can be mailed, and shows the same thing
in ten years. Per footage file: a timeline of the anomaly score with the calibrated
threshold and the event labels drawn; then one entry per alert with the frame at the
alert's peak, a spectrogram strip of the audio around it and, when an index is given, the
three most similar EARLIER moments in that index (earlier = appended to the index before
the alert's first window: previous nights, or earlier in the same file).

Deterministic: nothing depends on the clock or on dictionary order, images are encoded by
OpenCV with fixed parameters, so the same replay gives a byte-identical report.
"""

from __future__ import annotations

import base64
import html
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

THUMB_WIDTH = 240           # px; alert thumbnails (similar moments are shown at half that)
SPEC_CONTEXT_S = 3.0        # audio shown before and after an alert
SPEC_PX_PER_S = 60
SPEC_HEIGHT = 96
SPEC_RANGE_DB = 70.0
MAX_POINTS = 2000            # score points drawn per timeline (the most a 1000-px-wide plot can show)
SIMILAR = 3                 # earlier moments shown per alert
# Fixed palette for event labels (assigned in sorted-label order so colours are stable).
PALETTE = ("#4e79a7", "#59a14f", "#edc948", "#b07aa1", "#76b7b2", "#ff9da7", "#9c755f", "#f28e2b", "#bab0ac")


@dataclass
class ReportSink:
    """Gathers what the report needs from one file's records (a pipeline sink)."""

    camera: str
    footage: Path
    duration: float
    threshold: float | None = None
    t_start: list[float] = field(default_factory=list)
    t_end: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)  # NaN where the window had no score (a modality missing)
    events: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    index_source: int | None = None

    def window(self, record: dict[str, Any]) -> None:
        self.t_start.append(record["t_start"])
        self.t_end.append(record["t_end"])
        s = record.get("anomaly_score")
        self.score.append(float("nan") if s is None else float(s))

    def event(self, record: dict[str, Any]) -> None:
        if record["phase"] == "end":
            self.events.append(record)

    def alert(self, record: dict[str, Any]) -> None:
        self.alerts.append(record)
        if self.threshold is None:
            self.threshold = float(record["threshold"])

    def peak_time(self, t0: float, t1: float) -> float:
        """Centre of the best-scoring window inside ``[t0, t1]`` (the moment the thumbnail shows)."""
        ts, te, sc = np.array(self.t_start), np.array(self.t_end), np.array(self.score)
        inside = (ts >= t0 - 1e-6) & (te <= t1 + 1e-6) & np.isfinite(sc)
        if not inside.any():
            return 0.5 * (t0 + t1)
        i = int(np.flatnonzero(inside)[np.argmax(sc[inside])])
        return 0.5 * (ts[i] + te[i])


# ------------------------------------------------------------------------------------------------ images


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def grab_frames(footage: Path, times: Iterable[float], width: int = THUMB_WIDTH) -> dict[float, str]:
    """JPEG data URIs of the frames shown at ``times`` (the last frame at or before each).

    Each time is reached by seeking to the keyframe before it, so a thumbnail 20 hours into a file costs
    one GOP of decoding, not 20 hours. A file that cannot be decoded gives no thumbnails (logged), never a
    failed report.
    """
    import av

    from edgeav import media
    from edgeav.errors import UserError

    out: dict[float, str] = {}
    wanted = sorted(set(times))
    if not wanted:
        return out
    try:
        with media._open(Path(footage)) as c:  # the project's reasons for an unreadable file
            if not c.streams.video:
                return out
            vs = c.streams.video[0]
            origin, tb = media._origin(c), vs.time_base
            if tb is None:
                return out
            for t in wanted:
                c.seek(max(0, int((t + origin) / tb)), stream=vs, backward=True)
                last = None
                for frame in c.decode(vs):
                    if frame.pts is None:
                        continue
                    if float(frame.pts * tb) - origin > t + 1e-6 and last is not None:
                        break
                    last = frame
                if last is not None:
                    out[t] = _jpeg(last, width)
    except (UserError, OSError, av.error.FFmpegError) as exc:
        log.warning("report: no thumbnails from %s (%s)", footage, exc)
    return out


def audio_around(footage: Path, audio_path: Path, sample_rate: int, spans: list[tuple[float, float]],
                 ) -> list[np.ndarray]:
    """Mono audio of each ``(t0, t1)`` span (silence where there is none), streamed: memory stays that of the
    spans, not of the file (a day of 16 kHz float audio would be 5.5 GB), and decoding stops after the last."""
    from edgeav import media

    bufs = [np.zeros(max(0, round((t1 - t0) * sample_rate)), np.float32) for t0, t1 in spans]
    last = max((t1 for _, t1 in spans), default=0.0)
    for t, block in media.iter_audio_blocks(footage, sample_rate, audio_path):
        b0 = round(t * sample_rate)
        for (t0, _), buf in zip(spans, bufs, strict=True):
            s0 = round(t0 * sample_rate)
            lo, hi = max(b0, s0), min(b0 + len(block), s0 + len(buf))
            if lo < hi:
                buf[lo - s0:hi - s0] = block[lo - b0:hi - b0]
        if t > last:
            break
    return bufs


def _jpeg(frame: Any, width: int) -> str:
    import cv2

    rgb = frame.to_ndarray(format="rgb24")
    h = max(2, round(rgb.shape[0] * width / rgb.shape[1]))
    small = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return _data_uri("image/jpeg", buf.tobytes())


def _mel(hz: float | np.ndarray) -> Any:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def spectrogram_png(a: np.ndarray, sample_rate: int, t0: float, t1: float, mark: tuple[float, float]) -> str:
    """A log-power mel spectrogram strip (50 Hz to 8 kHz, low at the bottom) of ``a``, the audio of ``[t0, t1]``,
    as a PNG data URI.

    ``mark`` (seconds, same timeline) is outlined: the alert itself inside its context.
    """
    import cv2

    n_fft, hop = 512, 160
    if len(a) < n_fft:
        a = np.pad(a, (0, n_fft - len(a)))
    frames = np.lib.stride_tricks.sliding_window_view(a, n_fft)[::hop] * np.hanning(n_fft).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    # Rows on a mel scale (50 Hz to 8 kHz) as ears and the audio encoder see it: a linear axis leaves
    # everything below 1 kHz, where engines and voices live, in a few rows at the bottom.
    mel = np.linspace(_mel(50.0), _mel(sample_rate / 2), SPEC_HEIGHT + 1)
    edges = np.clip(np.round(_hz(mel) / (sample_rate / n_fft)).astype(int), 0, power.shape[1] - 1)
    rows = np.stack([power[:, lo:max(hi, lo + 1)].mean(axis=1) for lo, hi in itertools.pairwise(edges)])
    db = 10.0 * np.log10(rows + 1e-10)
    top = float(db.max())
    level = np.clip((db - (top - SPEC_RANGE_DB)) / SPEC_RANGE_DB, 0.0, 1.0)  # the loudest bin and 70 dB under it
    grey = (level[::-1] * 255).astype(np.uint8)            # frequency up
    width = max(8, round((t1 - t0) * SPEC_PX_PER_S))
    strip = cv2.resize(grey, (width, SPEC_HEIGHT), interpolation=cv2.INTER_AREA)
    rgb = cv2.applyColorMap(strip, cv2.COLORMAP_MAGMA)
    for edge in mark:
        x = int(round((edge - t0) / (t1 - t0) * (width - 1)))
        if 0 <= x < width:
            rgb[:, max(0, x - 1):x + 1] = (255, 255, 255)
    ok, buf = cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return _data_uri("image/png", buf.tobytes())


# ------------------------------------------------------------------------------------------------ search


def similar_earlier(index: Any, source: int, t0: float, t1: float, k: int = SIMILAR) -> list[Any]:
    """The ``k`` moments of ``index`` most like ``[t0, t1]`` of ``source`` among the windows indexed before it."""
    from edgeav.search import query_from_index, similarity, top_moments

    mine = np.flatnonzero((index.source == source) & (index.t_end > t0) & (index.t_start < t1))
    if not len(mine):
        return []
    qa, qv = query_from_index(index, source, t0, t1)
    scores = similarity(index, qa, qv, "joint").astype(np.float64)
    scores[int(mine[0]):] = -np.inf  # only what was indexed before the alert's first window
    return top_moments(index, scores, k, exclude=(source, t0, t1))


# ------------------------------------------------------------------------------------------------ html


def _fmt_t(t: float) -> str:
    h, rest = divmod(max(t, 0.0), 3600.0)
    m, s = divmod(rest, 60.0)
    return f"{int(h)}:{int(m):02d}:{s:05.2f}" if h else f"{int(m):02d}:{s:05.2f}"


def _tick(t: float) -> str:
    """Axis labels: whole seconds as m:ss (h:mm:ss past an hour)."""
    h, rest = divmod(round(t), 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span, 1e-9) / ticks
    mag = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def timeline_svg(r: ReportSink, colours: dict[str, str], first_alert: int) -> str:
    """Score over time, threshold dashed, event labels as a band above, alerts shaded (links to their entries)."""
    w, h, left, right, band, top, bottom = 1000, 190, 46, 12, 22, 30, 22
    plot_h = h - top - bottom
    dur = max(r.duration, max(r.t_end, default=0.0), 1e-3)
    sc = np.array(r.score, dtype=np.float64)
    finite = sc[np.isfinite(sc)]
    ymax = max([*(finite.tolist() or [0.0]), r.threshold or 0.0, 1e-3]) * 1.1

    def x(t: float) -> float:
        return left + (w - left - right) * t / dur

    def y(v: float) -> float:
        return top + plot_h * (1.0 - v / ymax)

    parts = [f'<svg class="timeline" viewBox="0 0 {w} {h}" width="100%" role="img" '
             f'aria-label="anomaly score over time" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{plot_h}" fill="#fafafa" '
             'stroke="#ccc"/>']
    step = max(1.0, _nice_step(dur))
    for i in range(int(dur // step) + 1):
        tx = x(i * step)
        parts.append(f'<line x1="{tx:.1f}" y1="{top + plot_h}" x2="{tx:.1f}" y2="{top + plot_h + 4}" stroke="#888"/>'
                     f'<text x="{tx:.1f}" y="{h - 6}" class="tick" text-anchor="middle">{_tick(i * step)}</text>')
    ystep = _nice_step(ymax, 4)
    for i in range(int(ymax // ystep) + 1):
        ty = y(i * ystep)
        parts.append(f'<text x="{left - 4}" y="{ty + 3:.1f}" class="tick" text-anchor="end">{i * ystep:g}</text>')
    for e in r.events:  # event labels, one band
        x0, x1 = x(e["t_start"]), x(e["t_end"])
        c = colours.get(e["label"], "#999")
        parts.append(f'<g class="event"><title>{html.escape(e["label"])} {_fmt_t(e["t_start"])}-'
                     f'{_fmt_t(e["t_end"])} score {e["score"]:.2f}</title>'
                     f'<rect x="{x0:.1f}" y="{top - band}" width="{max(x1 - x0, 1.5):.1f}" height="{band - 4}" '
                     f'fill="{c}" rx="2"/></g>')
        if x1 - x0 > 7 * len(e["label"]):
            parts.append(f'<text x="{x0 + 3:.1f}" y="{top - 10}" class="evlabel">{html.escape(e["label"])}</text>')
    for k, a in enumerate(r.alerts):
        x0, x1 = x(a["t_start"]), x(a["t_end"])
        parts.append(f'<a href="#alert-{first_alert + k}"><rect class="alert-span" x="{x0:.1f}" y="{top}" '
                     f'width="{max(x1 - x0, 2.0):.1f}" height="{plot_h}"><title>alert {first_alert + k}: '
                     f'{_fmt_t(a["t_start"])}-{_fmt_t(a["t_end"])} score {a["score"]:.3f}</title></rect></a>')
    centres = 0.5 * (np.array(r.t_start, dtype=np.float64) + np.array(r.t_end, dtype=np.float64))
    if len(sc) > MAX_POINTS:
        # A long file (a day is 172,800 windows): one point per slice of the axis, its highest score, so the
        # file stays small and no peak disappears.
        cut = np.linspace(0, len(sc), MAX_POINTS + 1).astype(int)
        with np.errstate(invalid="ignore"):  # an all-NaN slice (no score at all) stays NaN: a gap in the line
            sc = np.array([np.nanmax(sc[a:b]) if np.isfinite(sc[a:b]).any() else np.nan
                           for a, b in itertools.pairwise(cut)])
        centres = np.array([centres[a:b].mean() for a, b in itertools.pairwise(cut)])
    segs, cur = [], []  # the score line, broken where a window had no score
    for tc, s in zip(centres, sc, strict=True):
        if np.isfinite(s):
            cur.append(f"{x(float(tc)):.1f},{y(float(s)):.1f}")
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    for seg in segs:
        parts.append(f'<polyline class="score" points="{" ".join(seg)}"/>')
    if r.threshold is not None:
        ty = y(r.threshold)
        parts.append(f'<line class="threshold" x1="{left}" y1="{ty:.1f}" x2="{w - right}" y2="{ty:.1f}"/>'
                     f'<text x="{w - right - 4}" y="{ty - 4:.1f}" class="thlabel" text-anchor="end">'
                     f'threshold {r.threshold:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f2937;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1}main{padding:12px 24px 40px;max-width:1100px}
.file{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:12px 16px;margin:14px 0}
.file h2{font-size:16px;margin:0 0 4px;word-break:break-all}.meta{color:#555;margin:0 0 8px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
svg .tick{font-size:11px;fill:#666}svg .evlabel{font-size:11px;fill:#fff;pointer-events:none}
svg .score{fill:none;stroke:#1f2937;stroke-width:1.4}
svg .threshold{stroke:#d62728;stroke-dasharray:6 4;stroke-width:1.3}
svg .thlabel{font-size:11px;fill:#d62728}svg .alert-span{fill:#d6272833;cursor:pointer}
svg .alert-span:hover{fill:#d6272866}
.alerts{list-style:none;padding:0;margin:0}
.alert{display:grid;grid-template-columns:auto 1fr;gap:6px 16px;border-top:1px solid #e5e7eb;padding:12px 0}
.alert h3{grid-column:1/3;margin:0;font-size:15px}.alert h3 .score{color:#d62728}
.alert img{display:block;border-radius:4px}.alert figure{margin:0}.alert figcaption{font-size:12px;color:#666}
.spec img{max-width:100%;image-rendering:pixelated}
.similar{grid-column:1/3}.similar ol{display:flex;gap:12px;padding:0;margin:4px 0 0;list-style:none;flex-wrap:wrap}
.similar li{background:#f8fafc;border:1px solid #e5e7eb;border-radius:6px;padding:6px;font-size:12px;max-width:180px;
word-break:break-all}
.none{color:#777;font-style:italic}
.alert:target,.alert.flash{background:#fff7e6}
"""

# Clicking a shaded alert scrolls to its entry (plain anchors do that); this only highlights it briefly.
JS = """
document.querySelectorAll('a[href^="#alert-"]').forEach(function (a) {
  a.addEventListener('click', function () {
    var el = document.getElementById(a.getAttribute('href').slice(1));
    if (el) { el.classList.add('flash'); setTimeout(function () { el.classList.remove('flash'); }, 1200); }
  });
});
"""


def _moment_html(m: Any, thumb: str | None) -> str:
    where = html.escape(Path(m.footage).name) if m.footage else ""
    img = f'<img src="{thumb}" width="{THUMB_WIDTH // 2}" alt="frame of the similar moment">' if thumb else ""
    return (f'<li class="moment">{img}<b>{html.escape(m.camera)}</b> {where}<br>'
            f'{_fmt_t(m.t_start)}-{_fmt_t(m.t_end)} · similarity {m.score:.3f}</li>')


def render(reports: list[ReportSink], index_dir: Path | None, sample_rate: int, title: str = "edgeav replay report",
           ) -> str:
    """The whole HTML document (a string: the caller writes it atomically)."""
    from edgeav import media
    from edgeav.errors import UserError

    index = None
    if index_dir is not None:
        from edgeav.index import read_index

        index = read_index(index_dir)
    labels = sorted({e["label"] for r in reports for e in r.events})
    colours = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}

    # Every moment needing a frame, grouped by footage, so each file is decoded once.
    similar: dict[tuple[int, int], list[Any]] = {}
    wanted: dict[str, set[float]] = {}
    for fi, r in enumerate(reports):
        for ai, a in enumerate(r.alerts):
            wanted.setdefault(str(r.footage), set()).add(r.peak_time(a["t_start"], a["t_end"]))
            if index is not None and r.index_source is not None:
                ms = similar_earlier(index, r.index_source, a["t_start"], a["t_end"])
                similar[(fi, ai)] = ms
                for m in ms:
                    if m.footage and Path(m.footage).is_file():
                        wanted.setdefault(m.footage, set()).add(0.5 * (m.t_start + m.t_end))
    thumbs: dict[tuple[str, float], str] = {}
    for footage in sorted(wanted):
        is_alert_file = any(str(r.footage) == footage for r in reports)
        width = THUMB_WIDTH if is_alert_file else THUMB_WIDTH // 2
        for t, uri in grab_frames(Path(footage), wanted[footage], width).items():
            thumbs[(footage, t)] = uri

    n_alerts = sum(len(r.alerts) for r in reports)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           # No network at all: the page may only use what it carries.
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<header><h1>{html.escape(title)}</h1><p>{len(reports)} file(s), "
           f"<span id=\"alert-count\">{n_alerts}</span> alert(s), "
           f"{sum(len(r.events) for r in reports)} event(s)"
           + (f", similar moments from index {html.escape(str(index_dir))}" if index_dir is not None else "")
           + "</p></header><main>"]
    first = 1
    for fi, r in enumerate(reports):
        out.append(f'<section class="file"><h2>{html.escape(r.camera)} — {html.escape(str(r.footage))}</h2>')
        thr = f"threshold {r.threshold:.3f}" if r.threshold is not None else "no anomaly threshold"
        out.append(f'<p class="meta">{_fmt_t(r.duration)} of footage, {len(r.t_start)} windows, '
                   f"{len(r.events)} events, {len(r.alerts)} alerts, {thr}</p>")
        if labels:
            out.append('<div class="legend">' + "".join(
                f'<span><i style="background:{colours[lab]}"></i>{html.escape(lab)}</span>'
                for lab in labels if any(e["label"] == lab for e in r.events))
                + '<span><i style="background:#d6272855"></i>alert</span></div>')
        out.append(timeline_svg(r, colours, first))
        spans = [(max(0.0, a["t_start"] - SPEC_CONTEXT_S), a["t_end"] + SPEC_CONTEXT_S) for a in r.alerts]
        audio: list[np.ndarray] | None = None
        if r.alerts:
            try:
                info = media.probe(r.footage, require_audio=False)
                if info.has_audio:
                    audio = audio_around(r.footage, info.audio_path, sample_rate, spans)
            except (UserError, OSError) as exc:
                log.warning("report: no spectrograms from %s (%s)", r.footage, exc)
        out.append('<ol class="alerts">' if r.alerts else '<p class="none">No alerts in this file.</p>')
        for ai, a in enumerate(r.alerts):
            k = first + ai
            t0, t1 = a["t_start"], a["t_end"]
            peak = r.peak_time(t0, t1)
            out.append(f'<li class="alert" id="alert-{k}"><h3>Alert {k} · {_fmt_t(t0)}–{_fmt_t(t1)} · '
                       f'<span class="score">score {a["score"]:.3f}</span> (threshold {a["threshold"]:.3f})</h3>')
            thumb = thumbs.get((str(r.footage), peak))
            out.append(f'<figure><img src="{thumb}" width="{THUMB_WIDTH}" alt="frame at {_fmt_t(peak)}">'
                       f"<figcaption>frame at {_fmt_t(peak)}</figcaption></figure>" if thumb
                       else '<p class="none">no frame</p>')
            if audio is not None:
                c0, c1 = spans[ai]
                spec = spectrogram_png(audio[ai], sample_rate, c0, c1, (t0, t1))
                out.append(f'<figure class="spec"><img src="{spec}" alt="spectrogram {_fmt_t(c0)}-{_fmt_t(c1)}">'
                           f"<figcaption>audio {_fmt_t(c0)}–{_fmt_t(c1)}, 50 Hz–8 kHz mel scale "
                           "(alert between the white lines)"
                           "</figcaption></figure>")
            else:
                out.append('<p class="none">no audio</p>')
            if index is not None:
                ms = similar.get((fi, ai), [])
                items = "".join(_moment_html(m, thumbs.get((m.footage, 0.5 * (m.t_start + m.t_end)))) for m in ms)
                out.append('<div class="similar"><b>Most similar earlier moments</b>'
                           + (f"<ol>{items}</ol>" if ms else '<p class="none">nothing indexed before this alert</p>')
                           + "</div>")
            out.append("</li>")
        if r.alerts:
            out.append("</ol>")
        out.append("</section>")
        first += len(r.alerts)
    out.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(out) + "\n"

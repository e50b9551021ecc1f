"""Moving things drawn with OpenCV primitives: vehicles, people, a dog, fire and smoke.

Each :class:`Visual` is active during ``[t0, t1)`` and draws itself for a time ``t``
in two passes: ``draw`` (a surface lit by the scene: shading and dusk apply after it)
and ``glow`` (light sources: flashing lights, fire, muzzle flashes, drawn after the
shading so dusk does not dim them).  Objects that cross the view enter at ``t0``
with their leading edge on the frame edge and leave at ``t1`` with their trailing
edge on the other edge, so a label span is exactly the frames they are seen in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgeav.synth.timeline import Event, random_colour, rng_for

# Drawing order (far to near); the scene puts its occluders between these.
DEPTH_FAR_WALK, DEPTH_FAR_LANE, DEPTH_NEAR_LANE, DEPTH_NEAR_WALK, DEPTH_EFFECT = 0, 1, 2, 3, 4

# Vertical layout as fractions of the frame height (also used by the scene background).
HORIZON, FAR_WALK_Y, ROAD_TOP, FAR_LANE_Y, CENTRE_LINE, NEAR_LANE_Y, KERB, NEAR_WALK_Y = (
    0.44, 0.49, 0.50, 0.63, 0.655, 0.775, 0.80, 0.885)
LANE_SCALE = {"far": 0.78, "near": 1.0}
WALK_SCALE = {"far": 0.62, "near": 1.0}
SKIN = ((236, 188, 150), (198, 134, 96), (141, 85, 54), (255, 219, 172), (90, 56, 38))

Pt = tuple[int, int]


def _p(x: float, y: float) -> Pt:
    return round(x), round(y)


def _c(rgb: tuple[int, int, int] | np.ndarray) -> tuple[int, int, int]:
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * f))) for c in rgb)  # type: ignore[return-value]


@dataclass
class Visual:
    """Something drawn during ``[t0, t1)`` at a depth."""

    t0: float
    t1: float
    depth: int

    def draw(self, img: np.ndarray, t: float) -> None:  # pragma: no cover - interface
        pass

    def glow(self, img: np.ndarray, t: float, dark: float = 0.0) -> None:
        pass


def _crossing_x(t: float, t0: float, t1: float, width: float, frame_w: int, direction: str) -> float:
    """Left edge of an object that crosses the whole view during ``[t0, t1]``."""
    f = (t - t0) / (t1 - t0)
    travel = (frame_w + width) * f
    return -width + travel if direction == "right" else frame_w - travel


# ----------------------------------------------------------------------------- vehicles

def draw_vehicle(img: np.ndarray, x: float, yb: float, length: float, body: str, colour: tuple[int, int, int],
                 facing: int, accent: tuple[int, int, int] = (40, 40, 40)) -> tuple[float, float]:
    """A side view with the front towards ``facing``; returns the roof point (x, y) for light bars."""
    col = _c(colour)
    glass = (70, 90, 105)

    def X(lx: float) -> float:  # local 0..1 from back to front -> image x
        return x + (lx if facing > 0 else 1.0 - lx) * length

    def poly(points: list[tuple[float, float]], c: tuple[int, int, int]) -> None:
        pts = np.array([[X(px), yb - py * length] for px, py in points], dtype=np.float32)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], c, cv2.LINE_AA)

    wheels: tuple[float, ...]
    if body == "car":
        r = 0.095
        poly([(0.0, 0.08), (0.0, 0.24), (0.05, 0.27), (0.95, 0.26), (1.0, 0.2), (1.0, 0.08)], col)
        poly([(0.22, 0.26), (0.32, 0.40), (0.66, 0.40), (0.8, 0.26)], col)
        poly([(0.27, 0.265), (0.34, 0.37), (0.48, 0.37), (0.48, 0.265)], glass)
        poly([(0.51, 0.265), (0.51, 0.37), (0.64, 0.37), (0.74, 0.265)], glass)
        poly([(0.96, 0.17), (1.0, 0.17), (1.0, 0.21), (0.96, 0.21)], (235, 225, 170))
        poly([(0.0, 0.17), (0.03, 0.17), (0.03, 0.21), (0.0, 0.21)], (200, 30, 30))
        wheels, roof = (0.2, 0.8), (0.5, 0.40)
    elif body == "van":
        r = 0.085
        poly([(0.0, 0.08), (0.0, 0.52), (0.72, 0.52), (0.86, 0.36), (1.0, 0.3), (1.0, 0.08)], col)
        poly([(0.74, 0.49), (0.84, 0.37), (0.84, 0.3), (0.74, 0.3)], glass)
        poly([(0.05, 0.3), (0.05, 0.45), (0.66, 0.45), (0.66, 0.3)], _shade(colour, 0.85))
        poly([(0.0, 0.2), (1.0, 0.2), (1.0, 0.23), (0.0, 0.23)], _c(accent))
        wheels, roof = (0.17, 0.8), (0.42, 0.52)
    elif body == "truck":
        r = 0.065
        poly([(0.0, 0.07), (0.0, 0.42), (0.74, 0.42), (0.74, 0.07)], _c(accent))
        poly([(0.76, 0.07), (0.76, 0.36), (0.9, 0.36), (1.0, 0.24), (1.0, 0.07)], col)
        poly([(0.8, 0.33), (0.89, 0.33), (0.96, 0.24), (0.8, 0.24)], glass)
        wheels, roof = (0.12, 0.24, 0.86), (0.4, 0.42)
    else:  # bus
        r = 0.055
        poly([(0.0, 0.06), (0.0, 0.3), (0.02, 0.32), (0.98, 0.32), (1.0, 0.28), (1.0, 0.06)], col)
        for i in range(7):
            lx = 0.04 + i * 0.13
            poly([(lx, 0.19), (lx, 0.28), (lx + 0.11, 0.28), (lx + 0.11, 0.19)], glass)
        poly([(0.86, 0.07), (0.86, 0.17), (0.92, 0.17), (0.92, 0.07)], _c(accent))
        wheels, roof = (0.15, 0.82), (0.5, 0.32)
    rad = max(2, round(r * length))
    for w in wheels:
        c = _p(X(w), yb - rad)
        cv2.circle(img, c, rad, (25, 25, 25), -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, rad // 2), (150, 150, 150), -1, cv2.LINE_AA)
    cv2.line(img, _p(x, yb), _p(x + length, yb), (20, 20, 20), 1)
    if body in ("car", "van"):
        pass
    return X(roof[0]), yb - roof[1] * length


def draw_two_wheeler(img: np.ndarray, x: float, yb: float, length: float, colour: tuple[int, int, int],
                     facing: int, motor: bool, phase: float, rider: tuple[tuple[int, int, int], ...]) -> None:
    """A bicycle (thin spokes, pedalling) or a motorbike (solid wheels, engine block, helmet)."""
    r = 0.2 * length
    back, front = (x + r, x + length - r) if facing > 0 else (x + length - r, x + r)
    cy = yb - r
    th = max(1, round(length / 28))
    col = _c(colour)
    for wx in (back, front):
        if motor:
            cv2.circle(img, _p(wx, cy), round(r), (25, 25, 25), -1, cv2.LINE_AA)
            cv2.circle(img, _p(wx, cy), max(1, round(r * 0.45)), (140, 140, 140), -1, cv2.LINE_AA)
        else:
            cv2.circle(img, _p(wx, cy), round(r), (30, 30, 30), th, cv2.LINE_AA)
    mid = (back + front) / 2
    seat = (mid - facing * 0.12 * length, yb - 1.15 * r - 0.28 * length)
    bars = (front - facing * 0.1 * length, yb - 2.2 * r)
    crank = (mid, cy)
    if motor:
        pts = np.array([_p(back + facing * 0.1 * length, cy - 0.4 * r), _p(seat[0] - facing * 0.15 * length, seat[1]),
                        _p(bars[0], bars[1] + 0.3 * r), _p(front - facing * 0.15 * length, cy - 0.2 * r),
                        _p(mid, cy + 0.3 * r)], dtype=np.int32)
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA)
    else:
        for a, b in ((back, crank), (crank, seat), (seat, back), (seat, bars), (bars, (front, cy)), (crank, bars)):
            a2 = a if isinstance(a, tuple) else (a, cy)
            cv2.line(img, _p(*a2), _p(*b) if isinstance(b, tuple) else _p(b, cy), col, th, cv2.LINE_AA)
    shirt, pants, skin = rider
    hip = (seat[0], seat[1] - 0.02 * length)
    shoulder = (hip[0] + facing * 0.16 * length, hip[1] - 0.42 * length)
    cv2.line(img, _p(*hip), _p(*shoulder), _c(shirt), max(2, round(0.13 * length)), cv2.LINE_AA)
    cv2.line(img, _p(*shoulder), _p(*bars), _c(shirt), max(1, round(0.05 * length)), cv2.LINE_AA)
    foot = (crank[0] + 0.12 * length * math.cos(phase), crank[1] + 0.12 * length * math.sin(phase))
    knee = ((hip[0] + foot[0]) / 2 + facing * 0.1 * length, (hip[1] + foot[1]) / 2 - 0.05 * length)
    for a, b in ((hip, knee), (knee, foot)):
        cv2.line(img, _p(*a), _p(*b), _c(pants), max(1, round(0.06 * length)), cv2.LINE_AA)
    head = (shoulder[0] + facing * 0.03 * length, shoulder[1] - 0.12 * length)
    hr = max(2, round(0.085 * length))
    cv2.circle(img, _p(*head), hr, _c(shirt if motor else skin), -1, cv2.LINE_AA)
    if motor:
        cv2.circle(img, _p(head[0] + facing * hr * 0.4, head[1]), max(1, hr // 2), (30, 30, 40), -1)


# ----------------------------------------------------------------------------- people and dog

def draw_person(img: np.ndarray, x: float, yb: float, height: float, clothes: tuple[tuple[int, int, int], ...],
                phase: float, facing: int, swing: float = 0.35, lean: float = 0.0, gesture: float = 0.0) -> None:
    """A walking or running figure; ``gesture`` raises the front arm (talking)."""
    shirt, pants, skin = clothes
    h = height
    hip = (x, yb - 0.48 * h)
    shoulder = (x + facing * lean * 0.3 * h, yb - 0.8 * h)
    leg = 0.48 * h
    lw = max(1, round(0.07 * h))
    for sgn in (1, -1):
        a = sgn * swing * math.sin(phase)
        foot = (hip[0] + leg * math.sin(a) * facing, hip[1] + leg * math.cos(a))
        cv2.line(img, _p(*hip), _p(*foot), _c(pants), lw, cv2.LINE_AA)
    cv2.line(img, _p(*hip), _p(*shoulder), _c(shirt), max(2, round(0.17 * h)), cv2.LINE_AA)
    arm = 0.36 * h
    for sgn in (1, -1):
        a = -sgn * swing * 0.8 * math.sin(phase)
        if sgn == 1 and gesture > 0:
            a = 1.2 + 0.5 * gesture
        hand = (shoulder[0] + arm * math.sin(a) * facing, shoulder[1] + arm * math.cos(a))
        cv2.line(img, _p(*shoulder), _p(*hand), _c(shirt), max(1, round(0.055 * h)), cv2.LINE_AA)
    hr = max(2, round(0.085 * h))
    cv2.circle(img, _p(shoulder[0], shoulder[1] - 1.2 * hr), hr, _c(skin), -1, cv2.LINE_AA)


def draw_dog(img: np.ndarray, x: float, yb: float, length: float, coat: tuple[int, int, int], phase: float,
             facing: int, bark: float) -> None:
    """A trotting dog; ``bark`` (0..1) opens the mouth and lifts the head."""
    col = _c(coat)
    body_y = yb - 0.45 * length
    cx = x + 0.5 * length
    cv2.ellipse(img, _p(cx, body_y), (max(2, round(0.3 * length)), max(1, round(0.12 * length))), 0, 0, 360,
                col, -1, cv2.LINE_AA)
    for i, lx in enumerate((0.28, 0.38, 0.62, 0.72)):
        a = 0.4 * math.sin(phase + (math.pi if i % 2 else 0))
        hx = x + (lx if facing > 0 else 1 - lx) * length
        cv2.line(img, _p(hx, body_y), _p(hx + 0.3 * length * math.sin(a), yb), col, max(1, round(0.05 * length)))
    head = (cx + facing * 0.36 * length, body_y - (0.2 + 0.08 * bark) * length)
    cv2.circle(img, _p(*head), max(2, round(0.1 * length)), col, -1, cv2.LINE_AA)
    snout = (head[0] + facing * 0.12 * length, head[1] + 0.02 * length)
    cv2.line(img, _p(*head), _p(*snout), col, max(1, round(0.08 * length)), cv2.LINE_AA)
    if bark > 0.3:
        cv2.line(img, _p(*snout), _p(snout[0], snout[1] + 0.06 * length), (60, 20, 20), max(1, round(0.03 * length)))
    tail = (cx - facing * 0.3 * length, body_y - 0.02 * length)
    cv2.line(img, _p(*tail), _p(tail[0] - facing * 0.12 * length, tail[1] - 0.15 * length * (1 + 0.3 * math.sin(
        phase * 2))), col, max(1, round(0.04 * length)), cv2.LINE_AA)


def _clothes(rng: np.random.Generator) -> tuple[tuple[int, int, int], ...]:
    return random_colour(rng), random_colour(rng), SKIN[int(rng.integers(len(SKIN)))]


_GLOW_CACHE: dict[int, np.ndarray] = {}
_HEADLIGHT_HEIGHT = {"car": 0.19, "van": 0.26, "truck": 0.2, "bus": 0.15, "motorbike": 0.42}


def add_glow(img: np.ndarray, centre: tuple[float, float], radius: float, colour: tuple[int, int, int],
             strength: float) -> None:
    """Add a soft round pool of coloured light (a Gaussian falloff), clipped to the frame."""
    R = max(2, round(radius))
    g = _GLOW_CACHE.get(R)
    if g is None:
        yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
        g = _GLOW_CACHE[R] = np.exp(-(xx * xx + yy * yy) / (0.25 * R * R)).astype(np.float32)
    cx, cy = round(centre[0]), round(centre[1])
    x0, y0, x1, y1 = max(0, cx - R), max(0, cy - R), min(img.shape[1], cx + R + 1), min(img.shape[0], cy + R + 1)
    if x1 <= x0 or y1 <= y0:
        return
    k = g[y0 - (cy - R):y1 - (cy - R), x0 - (cx - R):x1 - (cx - R), None] * (np.array(colour, np.float32) * strength)
    roi = img[y0:y1, x0:x1]
    roi[:] = np.minimum(roi + k, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- visuals per kind

@dataclass
class Crossing(Visual):
    """Anything that crosses the whole view during its span (vehicles, riders, walkers, dogs)."""

    what: str = "car"
    direction: str = "right"
    y: float = 0.0
    size: float = 1.0            # px scale for the drawing
    width: float = 100.0         # px extent used for entering and leaving
    colour: tuple[int, int, int] = (128, 128, 128)
    frame_w: int = 640
    extra: dict = field(default_factory=dict)

    def left(self, t: float) -> float:
        return _crossing_x(t, self.t0, self.t1, self.width, self.frame_w, self.direction)

    def draw(self, img: np.ndarray, t: float) -> None:
        x = self.left(t)
        facing = 1 if self.direction == "right" else -1
        e = self.extra
        dist = (t - self.t0) * (self.frame_w + self.width) / (self.t1 - self.t0)
        if self.what in ("car", "van", "truck", "bus"):
            draw_vehicle(img, x, self.y, self.width, self.what, self.colour, facing, e.get("accent", (40, 40, 40)))
        elif self.what in ("bicycle", "motorbike"):
            draw_two_wheeler(img, x, self.y, self.width, self.colour, facing, self.what == "motorbike",
                             dist / (0.25 * self.width), e["rider"])
        elif self.what == "dog":
            bark = e["bark"](t) if "bark" in e else 0.0
            draw_dog(img, x, self.y, self.width, self.colour, dist / (0.12 * self.width), facing, bark)
        else:  # a group of people
            h = self.size
            for off, clothes, phase0, ph in e["people"]:
                phase = phase0 + dist / (e["stride"] * h)
                gest = math.sin(t * 2.2 + ph) if e.get("gesture") and math.sin(t * 0.9 + ph) > 0.2 else 0.0
                draw_person(img, x + off, self.y + 0.02 * h * math.sin(ph), h, clothes, phase, facing,
                            swing=e["swing"], lean=e["lean"], gesture=gest)

    def glow(self, img: np.ndarray, t: float, dark: float = 0.0) -> None:
        facing = 1 if self.direction == "right" else -1
        if dark > 0.15 and self.what in _HEADLIGHT_HEIGHT:  # headlights on as it gets dark
            front = self.left(t) + (self.width if facing > 0 else 0.0)
            c = (front - facing * 0.02 * self.width, self.y - _HEADLIGHT_HEIGHT[self.what] * self.width)
            add_glow(img, c, 0.12 * self.width, (255, 240, 200), 0.9 * dark)
            add_glow(img, (c[0] + facing * 0.12 * self.width, self.y), 0.14 * self.width, (255, 240, 200),
                     0.35 * dark)
        if "lights" not in self.extra:
            return
        lx_rel, ly_rel, period = self.extra["lights"]
        x = self.left(t) + (lx_rel if facing > 0 else 1 - lx_rel) * self.width
        y = self.y - ly_rel * self.width
        on_left = (t * 2.0 / period) % 2.0 < 1.0
        r = max(2, round(0.045 * self.width))
        for side, colour in ((-1, (255, 40, 40)), (1, (60, 90, 255))):
            lit = on_left if side < 0 else not on_left
            c = (x + side * 1.3 * r, y - r)
            cv2.circle(img, _p(*c), r, colour if lit else _shade(colour, 0.35), -1, cv2.LINE_AA)
            if lit:  # the light spills onto everything around it
                add_glow(img, c, 6 * r, colour, 0.45)


@dataclass
class Blast(Visual):
    """Explosion (flash, fireball, smoke) or gunshots (muzzle flashes with smoke puffs) at a point."""

    x: float = 0.0
    y: float = 0.0
    scale: float = 1.0
    shots: tuple[float, ...] = ()
    gunshot: bool = False
    smoke: tuple[int, int, int] = (90, 90, 90)

    def draw(self, img: np.ndarray, t: float) -> None:
        span = self.t1 - self.t0
        for ts in self.shots:
            age = t - ts
            if age < 0:
                continue
            fade = max(0.0, 1.0 - (t - self.t0) / span)      # all smoke gone by the end of the span
            for k in range(3 if self.gunshot else 6):
                r = self.scale * (0.15 + 0.35 * min(1.0, age / 2.0)) * (1 + 0.3 * k) * (0.4 if self.gunshot else 1)
                cx, cy = self.x + (k - 2.5) * 0.2 * r, self.y - age * self.scale * 0.08 - k * 0.35 * r
                rr = max(1, round(r))
                x0, y0 = max(0, round(cx - rr)), max(0, round(cy - rr))
                x1, y1 = min(img.shape[1], round(cx + rr)), min(img.shape[0], round(cy + rr))
                if x1 <= x0 or y1 <= y0:
                    continue
                roi = img[y0:y1, x0:x1]
                blob = roi.copy()
                cv2.circle(blob, _p(cx - x0, cy - y0), rr, self.smoke, -1, cv2.LINE_AA)
                cv2.addWeighted(blob, 0.55 * fade, roi, 1 - 0.55 * fade, 0, dst=roi)

    def glow(self, img: np.ndarray, t: float, dark: float = 0.0) -> None:
        for ts in self.shots:
            age = t - ts
            if age < 0:
                continue
            flash = math.exp(-age / (0.06 if self.gunshot else 0.25))
            if flash < 0.02:
                continue
            gain = (35 if self.gunshot else 140) * flash
            cv2.add(img, (gain, gain * 0.85, gain * 0.6, 0), dst=img)  # type: ignore[call-overload]
            r = self.scale * ((0.25 if self.gunshot else 1.0) * min(1.0, 0.3 + age * 4))
            cv2.circle(img, _p(self.x, self.y - 0.5 * r), max(1, round(r)), (255, round(150 + 90 * flash), 40),
                       -1, cv2.LINE_AA)
            cv2.circle(img, _p(self.x, self.y - 0.5 * r), max(1, round(0.5 * r)), (255, 250, 200), -1, cv2.LINE_AA)


@dataclass
class Crash(Visual):
    """Two vehicles meet head-on in one lane, stop with debris and smoke, then back away out of view."""

    a: Crossing | None = None
    b: Crossing | None = None
    x_meet: float = 0.0
    t_hit: float = 0.0
    t_back: float = 0.0
    frame_w: int = 640

    def _lefts(self, t: float) -> tuple[float, float]:
        assert self.a and self.b
        wa, wb, xm = self.a.width, self.b.width, self.x_meet
        if t < self.t_hit:
            f = (t - self.t0) / (self.t_hit - self.t0)
            return -wa + f * (xm - 0.0), self.frame_w - f * (self.frame_w - xm)
        if t < self.t_back:
            return xm - wa - 0.06 * wa, xm + 0.06 * wb
        f = (t - self.t_back) / (self.t1 - self.t_back)
        return (xm - wa - 0.06 * wa) * (1 - f) + (-wa) * f, (xm + 0.06 * wb) * (1 - f) + self.frame_w * f

    def draw(self, img: np.ndarray, t: float) -> None:
        assert self.a and self.b
        xa, xb = self._lefts(t)
        draw_vehicle(img, xa, self.a.y, self.a.width, self.a.what, self.a.colour, 1)
        draw_vehicle(img, xb, self.b.y, self.b.width, self.b.what, self.b.colour, -1)
        if t >= self.t_hit:
            rng = np.random.default_rng(int(self.t_hit * 1000))
            age = t - self.t_hit
            for _ in range(14):
                vx, vy = rng.normal(0, 1.0, 2) * self.a.width * 0.5
                px = self.x_meet + vx * min(age, 0.6)
                py = self.a.y - 0.2 * self.a.width + vy * min(age, 0.6) + 0.5 * 300 * min(age, 0.4) ** 2
                cv2.circle(img, _p(px, min(py, self.a.y)), max(1, round(self.a.width * 0.015)), (200, 200, 190), -1)
            fade = max(0.0, 1.0 - (t - self.t_hit) / (self.t1 - self.t_hit))
            r = self.a.width * (0.2 + 0.15 * min(age, 2.0))
            cx, cy = round(self.x_meet), round(self.a.y - 0.35 * self.a.width - age * 4)
            rr = max(1, round(r))
            x0, y0 = max(0, cx - rr), max(0, cy - rr)
            x1, y1 = min(img.shape[1], cx + rr), min(img.shape[0], cy + rr)
            if x1 > x0 and y1 > y0:
                roi = img[y0:y1, x0:x1]
                blob = roi.copy()
                cv2.circle(blob, (cx - x0, cy - y0), rr, (110, 110, 110), -1, cv2.LINE_AA)
                cv2.addWeighted(blob, 0.5 * fade, roi, 1 - 0.5 * fade, 0, dst=roi)

    def glow(self, img: np.ndarray, t: float, dark: float = 0.0) -> None:
        age = t - self.t_hit
        if 0 <= age < 0.3:
            g = 60 * math.exp(-age / 0.08)
            cv2.add(img, (g, g, g, 0), dst=img)  # type: ignore[call-overload]


def _people(rng: np.random.Generator, n: int, h: float, spacing: float) -> list:
    return [(i * spacing * h + rng.uniform(-0.1, 0.1) * h, _clothes(rng), rng.uniform(0, 6.3), rng.uniform(0, 6.3))
            for i in range(n)]


def walker_group(t0: float, t1: float, rng: np.random.Generator, w: int, h: int, lane: str, direction: str,
                 n: int, size: float, style: str) -> Crossing:
    """People walking (``walk``), talking while walking slowly (``talk``) or running (``run``)."""
    ph = WALK_SCALE[lane] * 0.165 * h * size
    spacing = {"talk": 0.45, "walk": 0.5, "run": 0.9}[style]
    people = _people(rng, n, ph, spacing)
    width = (n - 1) * spacing * ph + 0.6 * ph
    # Draw positions are centres; shift so the group's extent is [left, left + width].
    people = [(off + 0.3 * ph, c, p0, p) for off, c, p0, p in people]
    extra = dict(people=people, swing={"talk": 0.3, "walk": 0.35, "run": 0.75}[style],
                 lean={"talk": 0.0, "walk": 0.05, "run": 0.35}[style], stride={"talk": 0.25, "walk": 0.28,
                                                                              "run": 0.45}[style],
                 gesture=style == "talk")
    y = (FAR_WALK_Y if lane == "far" else NEAR_WALK_Y) * h
    return Crossing(t0, t1, DEPTH_FAR_WALK if lane == "far" else DEPTH_NEAR_WALK, what="people",
                    direction=direction, y=y, size=ph, width=width, frame_w=w, extra=extra)


def visuals_for(ev: Event, w: int, h: int, bark_env: object | None = None,
                shots: tuple[float, ...] = ()) -> list[Visual]:
    """The visuals of one event (empty for audio-only kinds); ``bark_env``/``shots`` come from the sound."""
    if ev.vis is None:
        return []
    t0, t1 = ev.vis
    p = ev.params
    rng = rng_for(ev.seed, 1)
    lane, direction, size, colour = p["lane"], p["direction"], p["size"], p["colour"]
    road_y = (FAR_LANE_Y if lane == "far" else NEAR_LANE_Y) * h
    depth = DEPTH_FAR_LANE if lane == "far" else DEPTH_NEAR_LANE
    s = LANE_SCALE[lane] * h / 360.0 * size
    k = ev.kind
    if k == "car":
        return [Crossing(t0, t1, depth, what="car", direction=direction, y=road_y, width=118 * s * rng.uniform(0.85,
                         1.15), colour=colour, frame_w=w)]
    if k == "truck":
        body = "bus" if p["variant"] == "bus" else "truck"
        length = (230 if body == "bus" else 170) * s * rng.uniform(0.75, 1.15)
        return [Crossing(t0, t1, depth, what=body, direction=direction, y=road_y, width=length, colour=colour,
                         frame_w=w, extra=dict(accent=random_colour(rng)))]
    if k == "siren":
        body = "van" if rng.random() < 0.6 else "car"
        length = (135 if body == "van" else 118) * s * rng.uniform(0.9, 1.1)
        roof = (0.42, 0.52) if body == "van" else (0.5, 0.40)
        return [Crossing(t0, t1, depth, what=body, direction=direction, y=road_y, width=length, colour=colour,
                         frame_w=w, extra=dict(accent=random_colour(rng),
                                               lights=(roof[0], roof[1], rng.uniform(0.3, 0.7))))]
    if k in ("motorbike", "bicycle"):
        length = (52 if k == "motorbike" else 46) * s * rng.uniform(0.85, 1.15)
        return [Crossing(t0, t1, depth, what=k, direction=direction, y=road_y - (0 if lane == "far" else 0.035 * h),
                         width=length, colour=colour, frame_w=w, extra=dict(rider=_clothes(rng)))]
    if k == "talking":
        return [walker_group(t0, t1, rng, w, h, lane, direction, int(rng.integers(2, 4)), size, "talk")]
    if k == "running":
        return [walker_group(t0, t1, rng, w, h, lane, direction, int(rng.integers(2, 5)), size, "run")]
    if k == "dog":
        length = WALK_SCALE[lane] * 0.13 * h * size
        y = (FAR_WALK_Y if lane == "far" else NEAR_WALK_Y) * h
        extra: dict = {"bark": bark_env} if bark_env is not None else {}
        return [Crossing(t0, t1, DEPTH_FAR_WALK if lane == "far" else DEPTH_NEAR_WALK, what="dog",
                         direction=direction, y=y, width=length, colour=colour, frame_w=w, extra=extra)]
    if k == "explosion":
        gun = p["variant"] == "gunshot"
        shots = shots or (t0,)
        y = rng.uniform(FAR_WALK_Y, NEAR_LANE_Y) * h
        return [Blast(t0, t1, DEPTH_EFFECT, x=p["x"] * w, y=y, scale=0.12 * h * size, shots=shots, gunshot=gun,
                      smoke=_shade(colour, 0.25) if gun else (80, 78, 76))]
    if k == "crash":
        a = Crossing(t0, t1, depth, what="car", direction="right", y=road_y, width=118 * s, colour=colour, frame_w=w)
        b = Crossing(t0, t1, depth, what="van" if rng.random() < 0.5 else "car", direction="left", y=road_y,
                     width=125 * s, colour=random_colour(rng), frame_w=w)
        span = t1 - t0
        return [Crash(t0, t1, depth, a=a, b=b, x_meet=p["x"] * w * 0.6 + 0.2 * w, t_hit=t0 + 0.3 * span,
                      t_back=t0 + 0.7 * span, frame_w=w)]
    raise AssertionError(f"no visual for {k}")

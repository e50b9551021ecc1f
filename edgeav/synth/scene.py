"""The fixed camera's view: a street background, occluders, light, clouds, sensor noise.

Everything static is drawn once (background texture, a parked vehicle, a tree, noise
tiles); a frame is then a copy of the background, the active visuals drawn with cv2,
the occluders pasted over them, one multiply by a low-resolution light map (slow
day-to-dusk drift and moving cloud shadows), the light sources, a colour conversion
straight to I420 (what the encoder takes) and a pre-drawn noise tile on the luma.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edgeav.synth import sprites
from edgeav.synth.audio import Gust, gust_gain
from edgeav.synth.kinds import Profile
from edgeav.synth.sprites import (
    CENTRE_LINE,
    DEPTH_NEAR_LANE,
    FAR_WALK_Y,
    HORIZON,
    KERB,
    NEAR_WALK_Y,
    ROAD_TOP,
    Visual,
)
from edgeav.synth.timeline import STREAM_LIFE, STREAM_SCENE, random_colour, rng_for

_LIGHT_DOWNSCALE = 8      # the light map is computed at 1/8 resolution, then resized
_NOISE_TILES = 12
_LIGHT_UPDATES_PER_S = 5.0


def _texture(rng: np.random.Generator, h: int, w: int, sigma: float, blur: float) -> np.ndarray:
    n: np.ndarray = rng.normal(0.0, sigma, (h, w)).astype(np.float32)
    if blur > 0:
        n = cv2.GaussianBlur(n, (0, 0), blur)
    return n


class Layer:
    """An occluder: pixels pasted over the visuals behind it (within a bounding box)."""

    def __init__(self, rgb: np.ndarray, mask: np.ndarray) -> None:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            self.box = (0, 0, 0, 0)
        else:
            self.box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        y0, y1, x0, x1 = self.box
        self.rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        self.mask = np.ascontiguousarray(mask[y0:y1, x0:x1])

    def paste(self, img: np.ndarray, dx: int = 0) -> None:
        """Paste over ``img``, shifted ``dx`` pixels sideways (clipped at the frame edges)."""
        y0, y1, x0, x1 = self.box
        a, b = max(0, x0 + dx), min(img.shape[1], x1 + dx)
        if y1 > y0 and b > a:
            roi = img[y0:y1, a:b]
            cv2.copyTo(self.rgb[:, a - x0 - dx:b - x0 - dx], self.mask[:, a - x0 - dx:b - x0 - dx], roi)


class Scene:
    """Static parts of the view, and the per-frame composition."""

    def __init__(self, width: int, height: int, seed: int, profile: Profile, gusts: list[Gust] | None = None) -> None:
        self.w, self.h, self.profile = width, height, profile
        self.gusts = gusts or []
        rng = rng_for(seed, STREAM_SCENE, 0)
        self.background = self._draw_background(rng)
        self.parked, self.front, self.foliage = self._draw_occluders(rng_for(seed, STREAM_SCENE, 1))
        sway_rng = rng_for(seed, STREAM_SCENE, 5)
        self.sway = (0.0025 * width, float(sway_rng.uniform(0.4, 0.9)), float(sway_rng.uniform(0, 2 * math.pi)))
        # Windows behind the tree (and its swaying crown) do not shine through it.
        hidden: np.ndarray = np.zeros((height, width), np.uint8)
        for layer in (self.front, self.foliage):
            y0, y1, x0, x1 = layer.box
            hidden[y0:y1, x0:x1] |= layer.mask
        reach = 2 * math.ceil(self.sway[0] * 4) + 1
        hidden = cv2.dilate(hidden, np.ones((1, reach), np.uint8))
        y0, y1 = self.lamp_rows
        self.lamps[hidden[y0:y1] > 0] = 0
        self._init_light(rng_for(seed, STREAM_SCENE, 2))
        noise_rng = rng_for(seed, STREAM_SCENE, 3)
        self.noise_tiles = []
        for _ in range(_NOISE_TILES):
            n = np.round(noise_rng.normal(0.0, profile.noise_sigma, (height, width))).astype(np.int16)
            self.noise_tiles.append((np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)))
        self.noise_rng = rng_for(seed, STREAM_SCENE, 4)

    # ------------------------------------------------------------------ static drawing
    def _draw_background(self, rng: np.random.Generator) -> np.ndarray:
        w, h = self.w, self.h
        img = np.zeros((h, w, 3), np.float32)
        y_hor, y_fw, y_road, y_kerb, y_nw = (round(f * h) for f in (HORIZON, FAR_WALK_Y, ROAD_TOP, KERB, 0.92))
        sky_top, sky_low = np.array([95, 140, 200]) * rng.uniform(0.85, 1.1), np.array([190, 205, 220])
        ramp = np.linspace(0, 1, y_hor)[:, None, None]
        img[:y_hor] = sky_top * (1 - ramp) + sky_low * ramp
        sky = np.zeros((h, w), np.float32)  # 1 where the sky shows: cloud shadows fall on everything else
        lamps = np.zeros((h, w, 3), np.uint8)
        sky[:y_hor] = 1.0
        # Buildings: blocks of varied height and colour, with window grids and shop fronts.
        x = -int(rng.integers(0, max(2, w // 10)))
        while x < w:
            bw = int(rng.uniform(0.09, 0.22) * w)
            top = int(rng.uniform(0.06, 0.3) * h)
            base = np.array(random_colour(rng), np.float32) * 0.5 + 70
            img[top:y_hor, max(x, 0):x + bw] = base
            sky[top:y_hor, max(x, 0):x + bw] = 0.0
            wy, wx = max(3, h // 40), max(3, w // 70)
            win = np.array((60, 70, 85), np.float32) * rng.uniform(0.7, 1.3)
            for yy in range(top + wy, round(0.36 * h), 3 * wy):
                for xx in range(x + wx, x + bw - 2 * wx, 3 * wx):
                    if xx >= 0:
                        lit = rng.random() < 0.15
                        img[yy:yy + 2 * wy, xx:xx + 2 * wx] = (215, 200, 140) if lit else win
                        if rng.random() < 0.3:  # lights that go on at dusk
                            lamps[yy:yy + 2 * wy, xx:xx + 2 * wx] = (120, 100, 40)
            awning = np.array(random_colour(rng), np.float32)
            img[round(0.37 * h):round(0.39 * h), max(x, 0):x + bw - 2] = awning
            img[round(0.39 * h):y_hor, max(x + wx, 0):x + bw - wx] = (55, 60, 66)
            x += bw
        img[y_hor:y_fw + 2] = (150, 148, 140)          # far sidewalk
        img[y_fw + 2:y_road] = (120, 118, 112)         # far kerb
        img[y_road:y_kerb] = (78, 78, 82)              # road
        img[y_kerb:y_kerb + max(2, h // 90)] = (165, 162, 155)  # near kerb
        img[y_kerb + max(2, h // 90):y_nw] = (158, 152, 140)    # near sidewalk
        img[y_nw:] = (82, 105, 60)                     # verge
        # Paving joints and lane markings.
        for xx in range(0, w, max(8, w // 24)):
            cv2.line(img, (xx, y_kerb + 3), (xx - w // 40, y_nw), (135, 130, 120), 1)
        y_c = round(CENTRE_LINE * h)
        for xx in range(0, w, max(10, w // 10)):
            cv2.rectangle(img, (xx, y_c), (xx + w // 20, y_c + max(1, h // 180)), (215, 215, 205), -1)
        # Street lamps (part of the background: they never move).
        for xx in rng.uniform(0.05, 0.95, 2):
            px = round(xx * w)
            cv2.line(img, (px, round(0.12 * h)), (px, y_hor + 2), (50, 52, 55), max(1, w // 300))
            cv2.line(img, (px, round(0.12 * h)), (px + w // 40, round(0.12 * h)), (50, 52, 55), max(1, w // 300))
        # Texture: fine grain plus blotches, so the background is not flat colour.
        tex = _texture(rng, h, w, 7.0, 0.7) + _texture(rng, h, w, 30.0, 6.0)
        img += tex[:, :, None]
        self.sky = sky
        rows = np.nonzero(lamps.any(axis=(1, 2)))[0]
        self.lamp_rows = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        self.lamps = np.ascontiguousarray(lamps[self.lamp_rows[0]:self.lamp_rows[1]])
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_occluders(self, rng: np.random.Generator) -> tuple[Layer, Layer, Layer]:
        w, h = self.w, self.h
        # A parked vehicle at the near kerb: in front of the near lane, behind the near sidewalk.
        rgb, mask = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
        length = 118 * h / 360.0 * rng.uniform(0.9, 1.2)
        x = (rng.uniform(0.02, 0.25) if rng.random() < 0.5 else rng.uniform(0.55, 0.8)) * w
        colour = random_colour(rng)
        for canvas, c in ((rgb, colour), (mask, (255,) * 3)):
            if canvas.ndim == 2:
                c2 = np.zeros((h, w, 3), np.uint8)
                sprites.draw_vehicle(c2, x, (KERB + 0.02) * h, length, "car", (255, 255, 255), 1, (255, 255, 255))
                canvas[:] = (c2.max(axis=2) > 0) * 255
            else:
                sprites.draw_vehicle(canvas, x, (KERB + 0.02) * h, length, "car", c, 1)
        parked = Layer(rgb, mask)
        # A tree near one side (its crown sways in the wind), and a bollard row: in front of everything.
        rgb, mask = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
        crown_rgb, crown_mask = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
        tx = (rng.uniform(0.06, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 0.94)) * w
        trunk_w = max(3, round(0.022 * w))
        for canvas, crown, bark, leaves in ((rgb, crown_rgb, (88, 64, 44), None), (mask, crown_mask, 255, 255)):
            cv2.rectangle(canvas, (round(tx - trunk_w / 2), round(0.25 * h)),
                          (round(tx + trunk_w / 2), round(0.97 * h)), bark if canvas.ndim == 3 else 255, -1)
            crng = np.random.default_rng(int(tx * 1000))
            for _ in range(9):
                cx = tx + crng.uniform(-0.09, 0.09) * w
                cy = crng.uniform(0.12, 0.36) * h
                r = round(crng.uniform(0.05, 0.1) * h)
                g = tuple(int(v) for v in np.array((50, 95, 45)) * crng.uniform(0.7, 1.3))
                cv2.circle(crown, (round(cx), round(cy)), r, g if leaves is None else leaves, -1, cv2.LINE_AA)
            for bx in np.linspace(0.55, 0.75, 4) * w:
                cv2.rectangle(canvas, (round(bx), round(0.86 * h)), (round(bx + 0.008 * w), round(0.95 * h)),
                              (60, 60, 64) if canvas.ndim == 3 else 255, -1)
        grain = _texture(rng, h, w, 8.0, 0.6)[:, :, None].astype(np.int16)
        layers = []
        for pixels, m in ((rgb, mask), (crown_rgb, crown_mask)):
            layers.append(Layer(np.clip(pixels.astype(np.int16) + grain, 0, 255).astype(np.uint8),
                                (m > 127).astype(np.uint8) * 255))
        return parked, layers[0], layers[1]

    # ------------------------------------------------------------------ light
    def _init_light(self, rng: np.random.Generator) -> None:
        p = self.profile
        self.lh, self.lw = max(2, self.h // _LIGHT_DOWNSCALE), max(2, self.w // _LIGHT_DOWNSCALE)
        self.drift_period = rng.uniform(20, 60) * 60.0
        self.drift_phase = rng.uniform(0, 2 * math.pi)
        self.flicker = [(rng.uniform(20, 90), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
        # A horizontally periodic cloud field, 4 views wide, drifting with the wind.
        tw = self.lw * 4
        field: np.ndarray = rng.normal(0.0, 1.0, (self.lh, tw)).astype(np.float32)
        field = cv2.GaussianBlur(cv2.copyMakeBorder(field, 0, 0, tw, tw, cv2.BORDER_WRAP), (0, 0),
                                 max(1.0, self.lw / 6))[:, tw:2 * tw]
        field = (field - field.mean()) / (field.std() + 1e-6)
        blobs = np.clip((field - 0.3) * 1.5, 0, 1)        # patches of shadow with soft edges
        self.cloud = np.ascontiguousarray(1.0 - p.clouds * blobs, dtype=np.float32)
        self.cloud_speed = rng.uniform(0.3, 1.2) * self.lw / 60.0 * (1 if rng.random() < 0.5 else -1)
        self.shadow_weight = 1.0 - cv2.resize(self.sky, (self.lw, self.lh), interpolation=cv2.INTER_AREA)
        self._light_key: int | None = None
        self._light = np.zeros((0, 0, 3), np.uint8)

    def gain(self, t: float) -> np.ndarray:
        """Per-channel light level at ``t``: slow day-to-dusk drift (warmer as it darkens), small flicker."""
        d = self.profile.drift
        level = 1.0 - d * 0.5 * (1 - math.cos(2 * math.pi * t / self.drift_period + self.drift_phase))
        level *= 1.0 + 0.03 * d * sum(math.sin(2 * math.pi * t / per + ph) for per, ph in self.flicker)
        return np.array([level ** 0.7, level ** 0.95, level ** 1.3], np.float32)

    def light_map(self, t: float) -> np.ndarray:
        """The light map, recomputed 5 times a second (clouds move under a pixel in that time)."""
        key = math.floor(t * _LIGHT_UPDATES_PER_S)
        if self._light_key != key:
            self._light = self._compute_light_map(key / _LIGHT_UPDATES_PER_S)
            self._light_key = key
        return self._light

    def _compute_light_map(self, t: float) -> np.ndarray:
        shift = (t * self.cloud_speed) % self.cloud.shape[1]
        i = int(shift)
        f = shift - i
        idx = (np.arange(self.lw) + i) % self.cloud.shape[1]
        cloud = self.cloud[:, idx] * (1 - f) + self.cloud[:, (idx + 1) % self.cloud.shape[1]] * f
        cloud = 1.0 - (1.0 - cloud) * self.shadow_weight
        small = cloud[:, :, None] * (128.0 * self.gain(t))[None, None, :]
        small = np.clip(small, 0, 255).astype(np.uint8)
        return cv2.resize(small, (self.w, self.h), interpolation=cv2.INTER_LINEAR)

    # ------------------------------------------------------------------ frames
    def render_i420(self, t: float, visuals: list[Visual]) -> np.ndarray:
        """The frame at ``t`` with the given active visuals, as planar I420 for the encoder."""
        img = self.background.copy()
        ordered = sorted(visuals, key=lambda v: v.depth)
        parked_done = False
        for v in ordered:
            if not parked_done and v.depth > DEPTH_NEAR_LANE:
                self.parked.paste(img)
                parked_done = True
            v.draw(img, t)
        if not parked_done:
            self.parked.paste(img)
        self.front.paste(img)
        amp, freq, phase = self.sway
        self.foliage.paste(img, round(amp * gust_gain(self.gusts, t) * math.sin(2 * math.pi * freq * t + phase)))
        cv2.multiply(img, self.light_map(t), dst=img, scale=1.0 / 128.0)
        dark = min(1.0, max(0.0, (1.0 - float(self.gain(t)[1])) / 0.45))
        if dark > 0.1 and self.lamps.size:  # windows light up at dusk
            y0, y1 = self.lamp_rows
            roi = img[y0:y1]
            cv2.scaleAdd(self.lamps, dark, roi, dst=roi)
        for v in ordered:
            v.glow(img, t, dark)
        yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420)
        pos, neg = self.noise_tiles[int(self.noise_rng.integers(_NOISE_TILES))]
        luma = yuv[: self.h]
        cv2.add(luma, pos, dst=luma)
        cv2.subtract(luma, neg, dst=luma)
        return yuv


def passersby(profile: Profile, seed: int, seconds: float, w: int, h: int) -> list[Visual]:
    """Silent people walking by: life in the view that is no event (never labelled)."""
    out: list[Visual] = []
    if profile.passersby_per_min <= 0:
        return out
    arrivals = rng_for(seed, STREAM_LIFE, 1)
    t, n = 0.0, 0
    while True:
        t += float(arrivals.exponential(60.0 / profile.passersby_per_min))
        if t >= seconds:
            break
        rng = rng_for(seed, STREAM_LIFE, 2, n)
        n += 1
        dur = float(rng.uniform(6.0, 14.0))
        lane = "near" if rng.random() < 0.5 else "far"
        direction = "left" if rng.random() < 0.5 else "right"
        out.append(sprites.walker_group(t, min(t + dur, seconds + 30), rng, w, h, lane, direction,
                                        int(rng.integers(1, 3)), float(rng.uniform(0.8, 1.2)), "walk"))
    return out


# Rows the walkers' feet stand on; exported for the frame-grid annotations.
WALK_ROWS = (FAR_WALK_Y, NEAR_WALK_Y)

"""The measured speeds (edgeav.motion) and the anomaly memory's ceiling part that scores them."""

from __future__ import annotations

import numpy as np
import pytest

from edgeav.motion import HOLD_WINDOWS, SpeedHold, band_speeds, band_velocities


def moving_blocks(speeds: dict[tuple[int, int], float], n: int = 2, frames: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` windows of a grey street with sensor noise; each ``(row0, row1): v`` is a block crossing those rows
    at ``v`` px per frame (negative: leftwards)."""
    rng = np.random.default_rng(seed)
    out = np.full((n, frames, 64, 112, 3), 110.0)
    for (r0, r1), v in speeds.items():
        for i in range(frames):
            x0 = round((20 if v > 0 else 80) + v * i)
            out[:, i, r0:r1, x0:x0 + 6] = 200.0 if v > 0 else 40.0
    return np.clip(out + rng.normal(0.0, 2.5, out.shape), 0, 255).astype(np.uint8)


def test_each_band_gets_the_speed_of_what_crosses_it_either_way():
    v = band_speeds(moving_blocks({(40, 52): 7.0, (16, 28): -5.0}))
    assert v.shape == (2, 16) and v.dtype == np.float32
    np.testing.assert_allclose(v[:, 10:13], 7.0, atol=0.3)  # rows 40-51
    np.testing.assert_allclose(v[:, 4:7], 5.0, atol=0.3)  # rows 16-27, leftwards
    rest = np.delete(v, [4, 5, 6, 10, 11, 12], axis=1)
    assert (rest < 0.5).all(), rest  # noise alone moves nowhere


def test_velocities_keep_the_direction_rightwards_then_leftwards():
    x = moving_blocks({(40, 52): 7.0, (16, 28): -5.0})
    v = band_velocities(x)
    assert v.shape == (2, 32) and v.dtype == np.float32
    right, left = v[:, :16], v[:, 16:]
    np.testing.assert_allclose(right[:, 10:13], 7.0, atol=0.3)  # rows 40-51, rightwards
    np.testing.assert_allclose(left[:, 4:7], 5.0, atol=0.3)  # rows 16-27, leftwards
    assert (right[:, 4:7] == 0).all() and (left[:, 10:13] == 0).all()  # nothing the other way
    np.testing.assert_array_equal(right + left, band_speeds(x))  # either way: the unsigned speeds
    assert band_velocities(moving_blocks({}, frames=2)).shape == (2, 32)


def test_a_still_scene_and_too_few_frames_measure_nothing():
    assert (band_speeds(moving_blocks({})) == 0).all()
    two = moving_blocks({(40, 52): 7.0}, frames=2)
    assert (band_speeds(two) == 0).all() and band_speeds(two).shape == (2, 16)
    assert band_speeds(np.zeros((0, 4, 64, 112, 3), np.uint8)).shape == (0, 16)


def test_speeds_do_not_depend_on_the_batch():
    x = np.concatenate([moving_blocks({(40, 52): s}, n=1, seed=i) for i, s in enumerate((3.0, 9.0, -12.0))])
    whole = band_speeds(x)
    np.testing.assert_array_equal(whole, np.concatenate([band_speeds(x[i:i + 1]) for i in range(3)]))
    np.testing.assert_allclose(whole[:, 11], [3.0, 9.0, 12.0], atol=0.3)


def test_the_hold_keeps_a_speed_only_once_it_lasted_and_restarts_after_a_gap():
    hop = 0.5
    raw = np.array([[9.0], [9.0], [9.0], [9.0], [2.0], [9.0], [9.0], [9.0], [np.nan], [9.0]], np.float32)
    t = np.arange(len(raw)) * hop
    t[7:] += 10 * hop  # windows 7.. come after a gap in the stream
    held = SpeedHold(hop).apply(t, raw)
    assert HOLD_WINDOWS == 3
    # the smallest of the last three consecutive windows; a fresh history at the start, after the gap, after NaN
    np.testing.assert_array_equal(held[:, 0], [9, 9, 9, 9, 2, 2, 2, 9, np.nan, 9])
    # the same in any batches (a pipeline's, or a file's at once)
    hold = SpeedHold(hop)
    pieces = np.concatenate([hold.apply(t[a:b], raw[a:b]) for a, b in ((0, 3), (3, 4), (4, 10))])
    np.testing.assert_array_equal(pieces, held)


def test_the_ceiling_part_flags_a_band_faster_than_any_normal_and_survives_save_and_load(tmp_path):
    from edgeav.calibrate import AnomalyMemory, calibrate

    rng = np.random.default_rng(3)
    n = 7200  # an hour of windows
    speeds = np.zeros((n, 16), np.float32)
    speeds[:, 10] = rng.uniform(6.0, 12.0, n)  # the road: fast
    speeds[:, 13] = rng.uniform(0.0, 4.0, n)  # the sidewalk: slow
    mem, _ = calibrate({"video_speed": speeds}, ("video_speed",), 0.5, 1.0)
    assert mem.parts[0].kind == "ceiling" and mem.parts[0].memory.shape == (1, 16)
    probe = np.zeros((3, 16), np.float32)
    probe[:, 10] = 11.0
    probe[1, 13] = 3.5  # a fast walker: still normal
    probe[2, 13] = 9.0  # a runner on the sidewalk, slower than the road's cars
    s = mem.score({"video_speed": probe})
    assert s[2] >= mem.threshold > max(s[0], s[1]), (s, mem.threshold)
    mem.save(tmp_path / "m.npz")
    back = AnomalyMemory.load(tmp_path / "m.npz")
    assert back.parts[0].kind == "ceiling"
    np.testing.assert_array_equal(back.score({"video_speed": probe}), s)


def test_a_runner_against_the_lanes_traffic_is_flagged_by_velocity_though_no_faster_than_its_cars():
    """A one-way lane: its cars cross rightwards at 6-12 px per frame gap, walkers either way at up to 4. A runner
    crossing the lane's rows leftwards at 9 is no faster than the cars, so the unsigned speeds' ceiling (12) hides
    it; the velocities' leftward ceiling there is the walkers' (4), and the runner stands out."""
    from edgeav.calibrate import calibrate

    rng = np.random.default_rng(8)
    n = 7200
    right = np.zeros((n, 16), np.float32)
    left = np.zeros((n, 16), np.float32)
    right[:, 11] = rng.uniform(6.0, 12.0, n)  # the lane's traffic, one way
    walkers = rng.uniform(0.0, 4.0, n)
    way = rng.random(n) < 0.5
    right[:, 12] = np.where(way, walkers, 0.0)
    left[:, 12] = np.where(way, 0.0, walkers)
    velocity = np.concatenate([right, left], axis=1)
    speed = right + left
    by_speed, _ = calibrate({"video_speed": speed}, ("video_speed",), 0.5, 1.0)
    by_velocity, _ = calibrate({"video_velocity": velocity}, ("video_velocity",), 0.5, 1.0)
    assert by_velocity.parts[0].kind == "ceiling" and by_velocity.parts[0].memory.shape == (1, 32)
    probe = np.zeros((3, 32), np.float32)
    probe[:2, 11] = 10.0  # a car on its way
    probe[1, 16 + 12] = 3.0  # and a walker leftwards: normal
    probe[2, 16 + 11] = 9.0  # a runner leftwards across the lane's rows
    s = by_velocity.score({"video_velocity": probe})
    assert s[2] >= by_velocity.threshold > max(s[0], s[1]), (s, by_velocity.threshold)
    unsigned = by_speed.score({"video_speed": probe[:, :16] + probe[:, 16:]})
    assert unsigned[2] < by_speed.threshold, (unsigned, by_speed.threshold)  # what the unsigned speeds miss


def test_a_ceiling_part_is_scaled_to_its_share_of_the_rate_beside_knn_parts():
    """Calibrated with a kNN part, the ceiling part's own threshold for CEILING_RATE_SHARE of the rate scores
    exactly the kNN part's threshold: each alarms at its own share, whatever law its scores follow."""
    from edgeav.calibrate import CEILING_RATE_SHARE, calibrate, fit_part, threshold_for_rate

    rng = np.random.default_rng(4)
    n, hop, rate = 7200, 0.5, 1.0
    feats = {"audio_summary": rng.standard_normal((n, 6)).astype(np.float32),
             "video_speed": np.abs(rng.standard_normal((n, 16)) * 3).astype(np.float32)}
    mem, _ = calibrate(feats, ("audio_summary", "video_speed"), hop, rate, memory_size=500)
    knn_alone, _ = calibrate({"audio_summary": feats["audio_summary"]}, ("audio_summary",), hop, rate,
                             memory_size=500)
    unmatched, oof = fit_part("video_speed", feats["video_speed"], 3, 500)
    own, _ = threshold_for_rate(oof, rate * CEILING_RATE_SHARE, hop)
    excess = own * unmatched.spread + unmatched.centre  # px beyond the ceiling that reached its own threshold
    probe = np.zeros((1, 16), np.float32)
    probe[0, 5] = unmatched.memory[0, 5] + excess
    speed_part = mem.parts[1]
    assert speed_part.kind == "ceiling" and own > 0
    assert float(speed_part.scores(probe, 3)[0]) == pytest.approx(knn_alone.threshold, rel=1e-4)


def test_a_site_that_never_moved_alarms_on_a_pixel_of_speed_not_on_noise():
    """Calibration footage without motion: every speed 0, so the ceiling part's own threshold degenerates; its
    scaling is bounded, so a speed of a pixel per frame gap above the ceiling meets the threshold and a tenth
    of one does not."""
    from edgeav.calibrate import calibrate

    rng = np.random.default_rng(6)
    n = 7200
    feats = {"audio_summary": rng.standard_normal((n, 6)).astype(np.float32),
             "video_speed": np.zeros((n, 16), np.float32)}
    mem, _ = calibrate(feats, ("audio_summary", "video_speed"), 0.5, 1.0, memory_size=500)
    probe = np.zeros((2, 16), np.float32)
    probe[0, 3], probe[1, 3] = 1.0, 0.1
    s = mem.parts[1].scores(probe, 3)
    assert np.isfinite(s).all() and s[0] >= mem.threshold * 0.999 and s[1] < mem.threshold, (s, mem.threshold)

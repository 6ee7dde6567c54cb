"""The QRS window of an input ECG (``cdt_bayes._qrs``): what ``cdt-bayes fit --qrs auto`` keeps."""

from __future__ import annotations

import numpy as np
import pytest
from inference_case import synthetic

from cdt_bayes import InputFileError
from cdt_bayes._qrs import crop_ecg, qrs_window


def beat(n_leads=8, qrs_on=100.0, qrs_ms=90.0, t_peak_after=170.0, t_amp=0.3, n_t=700, seed=0):
    """A synthetic beat on a 1 ms grid: a sharp multiphasic QRS, an ST segment, a broad T wave.

    Each lead: baseline offset + QRS (three Gaussian humps of sd 6-9 ms inside
    ``[qrs_on, qrs_on + qrs_ms]``) + T wave (Gaussian of sd 40 ms, ``t_amp`` of the QRS
    amplitude, centred ``t_peak_after`` ms after the QRS end). mV.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(float(n_t))
    v = np.zeros((n_leads, n_t))
    centres = qrs_on + qrs_ms * np.array([0.2, 0.5, 0.8])
    for i in range(n_leads):
        amps = rng.normal(size=3) * np.array([0.3, 1.0, 0.5])
        for c, a, s in zip(centres, amps, (6.0, 7.0, 9.0), strict=True):
            v[i] += a * np.exp(-0.5 * ((t - c) / s) ** 2)
        t_centre = qrs_on + qrs_ms + t_peak_after
        v[i] += t_amp * np.abs(amps).max() * np.exp(-0.5 * ((t - t_centre) / 40.0) ** 2)
        v[i] += rng.normal() * 0.05  # baseline offset
    return t, v


@pytest.mark.parametrize("noise_rel", [0.0, 0.02, 0.05])
def test_a_qrs_only_ecg_is_kept_whole(noise_rel):
    """Simulated QRS-only ECGs (the full eikonal on the test slab) are never cut."""
    *_, tt, _, _, clean = synthetic(noise_rel=0.0)
    rng = np.random.default_rng(3)
    ecg = clean + noise_rel * np.abs(clean).max() * rng.normal(size=clean.shape)
    w = qrs_window(tt, ecg)
    assert not w.cut and w.start_ms == tt[0] and w.end_ms == tt[-1]
    assert w.n_beats == 1 and "whole ECG" in w.reason


@pytest.mark.parametrize("noise_rel", [0.0, 0.02])
def test_st_t_segment_and_lead_in_are_cut(noise_rel):
    t, v = beat()
    v = v + noise_rel * np.abs(v).max() * np.random.default_rng(1).normal(size=v.shape)
    w = qrs_window(t, v, "beat.csv")
    assert w.cut and w.n_beats == 1
    # the QRS (humps at 118-172 ms, tails of ~2 sd) is inside, the T wave's peak is not
    assert 80.0 <= w.start_ms <= 105.0
    assert 185.0 <= w.end_ms <= 260.0 < 190.0 + 170.0
    assert w.start_ms < w.onset_ms < w.end_qrs_ms < w.end_ms
    assert "beat.csv" in w.reason and "fitting" in w.reason


def test_short_lead_in_is_left_to_the_pmj_times():
    t, v = beat(qrs_on=30.0)
    w = qrs_window(t, v)
    assert w.start_ms == 0.0 and w.end_ms < 200.0


def test_several_beats_fit_the_typical_one():
    """Five beats 800 ms apart, the third one an outlier: a typical beat is chosen."""
    t1, v1 = beat(n_t=800, qrs_on=100.0, seed=0)
    odd = beat(n_t=800, qrs_on=100.0, seed=5)[1] * 1.1
    v = np.concatenate([v1, v1, odd, v1, v1], axis=1)
    t = np.arange(float(v.shape[1]))
    w = qrs_window(t, v)
    assert w.n_beats == 5 and w.beat != 2 and w.cut
    k = w.beat
    assert 800 * k + 80 <= w.start_ms < 800 * k + 105 and w.end_ms <= 800 * k + 360
    assert "5 beats" in w.reason


def test_flat_ecg_is_an_error():
    with pytest.raises(InputFileError, match="flat"):
        qrs_window(np.arange(50.0), np.zeros((3, 50)), "flat.csv")


def test_crop_restarts_time_at_the_window():
    t = np.arange(100.0, 200.0)
    v = np.vstack([t, -t])
    tc, vc, off = crop_ecg(t, v, 120.0, 150.0)
    assert off == 120.0 and tc[0] == 0.0 and tc[-1] == 30.0
    np.testing.assert_array_equal(vc[0], np.arange(120.0, 151.0))
    with pytest.raises(InputFileError, match="holds 3 samples"):
        crop_ecg(t, v, 120.0, 122.0, "e.csv")


@pytest.mark.parametrize("noise_rel", [0.0, 0.02, 0.05])
def test_a_simulated_qrs_starts_and_ends_on_zero(noise_rel):
    """The full eikonal's ECG (zero before the first PMJ fires and after the last node
    activates) is not flagged, with white noise up to 5 % of the peak."""
    from cdt_bayes._qrs import window_levels

    *_, clean = synthetic(noise_rel=0.0)
    ecg = clean + noise_rel * np.abs(clean).max() * np.random.default_rng(4).normal(size=clean.shape)
    lv = window_levels(ecg)
    assert not lv["off_zero"], lv
    assert lv["start_mV"].shape == (ecg.shape[0],)


@pytest.mark.parametrize("where", ["start", "end"])
def test_a_window_off_zero_is_flagged(where):
    """A level of 10 % of the peak on one lead, at either end (a PR or ST level), is flagged."""
    from cdt_bayes._qrs import window_levels

    *_, clean = synthetic(noise_rel=0.0)
    ecg = clean + 0.02 * np.abs(clean).max() * np.random.default_rng(4).normal(size=clean.shape)
    n = ecg.shape[1]
    ramp = np.linspace(1.0, 0.0, n) if where == "start" else np.linspace(0.0, 1.0, n)
    ecg[2] += 0.1 * np.abs(clean).max() * ramp
    lv = window_levels(ecg)
    assert lv["off_zero"] and 0.07 < lv["max_rel"] < 0.15, lv
    level = lv["start_mV"] if where == "start" else lv["end_mV"]
    assert np.argmax(np.abs(level)) == 2

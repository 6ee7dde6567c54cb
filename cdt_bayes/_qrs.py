"""Where the QRS complex lies in an input ECG: the window ``cdt-bayes fit`` fits.

The forward model (``FORWARD_MODEL.md``) produces depolarisation only: once every node has
activated, its ECG is zero. A recording with an ST segment and a T wave, a long baseline
before the QRS, or several beats therefore has to be cut to one QRS complex before it is
fitted. :func:`qrs_window` finds that window from the *spatial velocity* of the ECG,
``s(t) = sqrt(mean_leads (dV/dt)²)`` (lightly smoothed), which is large during the QRS and
small on the baseline, ST segment and T wave whatever the leads' offsets.

It is conservative: it cuts only where the recording clearly holds more than a QRS, so an
ECG that is already one QRS (``cdt-bayes simulate`` output, the shared data's QRS files) is
kept whole.

Units: ms, mV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import InputFileError

#: Fraction of the peak spatial velocity above which a sample counts as QRS activity.
ACTIVITY_FRACTION = 0.05
#: Gaps in the activity shorter than this (ms) do not split a complex.
MERGE_GAP_MS = 20.0
#: Baseline kept before the detected onset (ms); the fitted QRS then starts near this time.
MARGIN_START_MS = 15.0
#: Recording kept after the detected end (ms): the end of the QRS is faint and detected early.
MARGIN_END_MS = 20.0
#: The start is cut only when the onset lies further than this (ms) into the recording:
#: shorter lead-ins are left to the PMJ initiation times (``build_problem`` raises their
#: prior bound ``t_max_ms`` by the detected onset), and
#: in noisy recordings the first, faint part of the QRS is detected up to ~35 ms late.
MAX_LEAD_IN_MS = 50.0
#: The end is cut only when the recording runs on for at least this long (ms) after the
#: detected end (an ST segment and T wave), never to trim a QRS-only recording.
MIN_TAIL_MS = 120.0
#: A complex counts as a beat when its peak spatial velocity is at least this fraction of
#: the largest; beats closer together than ``MIN_RR_MS`` are one beat.
BEAT_FRACTION = 0.5
MIN_RR_MS = 300.0


@dataclass(frozen=True)
class QrsWindow:
    """The part of an ECG to fit.

    Attributes
    ----------
    start_ms, end_ms : float
        Window, ms, in the recording's own times (inclusive).
    onset_ms, end_qrs_ms : float
        Detected QRS onset and end, ms (where the window cuts, it keeps ``MARGIN_START_MS``
        before the onset and ``MARGIN_END_MS`` after the end).
    n_beats : int
        QRS complexes found (beats at least ``MIN_RR_MS`` apart).
    beat : int
        Index of the chosen beat (0-based) among them.
    cut : bool
        Whether the window is shorter than the recording.
    reason : str
        One line for the user: what was found and what is kept.
    """

    start_ms: float
    end_ms: float
    onset_ms: float
    end_qrs_ms: float
    n_beats: int
    beat: int
    cut: bool
    reason: str


def spatial_velocity(values: np.ndarray, smooth_ms: float = 3.0) -> np.ndarray:
    """Spatial velocity of an ECG on a 1 ms grid.

    Parameters
    ----------
    values : (n_leads, n_t) float
        Signals on a 1 ms grid, mV.
    smooth_ms : float
        Standard deviation of the Gaussian that smooths each lead before differencing, ms.

    Returns
    -------
    (n_t,) float64
        ``sqrt(mean over leads of (dV/dt)²)``, mV/ms.
    """
    v = np.asarray(values, np.float64)
    if smooth_ms > 0 and v.shape[1] > 1:
        half = int(np.ceil(3 * smooth_ms))
        k = np.exp(-0.5 * (np.arange(-half, half + 1) / smooth_ms) ** 2)
        k /= k.sum()
        pad = np.pad(v, ((0, 0), (half, half)), mode="edge")
        v = np.stack([np.convolve(row, k, mode="valid") for row in pad])
    d = np.gradient(v, axis=1) if v.shape[1] > 1 else np.zeros_like(v)
    return np.sqrt(np.mean(d**2, axis=0))


def _lead_noise_sd(v: np.ndarray) -> np.ndarray:
    """Per-lead white-noise sd from the median absolute second difference, ``(n_leads,)`` mV.

    Robust to the QRS, which holds few samples of a recording; ``v`` needs 3 samples or more.
    """
    d2 = np.diff(v, n=2, axis=1)
    return np.median(np.abs(d2 - np.median(d2, axis=1, keepdims=True)), axis=1) / 0.6745 / np.sqrt(6.0)


def noise_floor(values: np.ndarray, seed: int = 0) -> float:
    """Spatial velocity that white measurement noise alone reaches (its 99th percentile).

    Each lead's noise sd is estimated from the median absolute second difference (robust to
    the QRS, which holds few samples of a recording), and :func:`spatial_velocity` is
    applied to white noise of those sds.

    Parameters
    ----------
    values : (n_leads, n_t) float
        Signals on a 1 ms grid, mV.
    seed : int
        Seed of the synthetic noise (the result is deterministic).

    Returns
    -------
    float
        mV/ms.
    """
    v = np.asarray(values, np.float64)
    if v.shape[1] < 3:
        return 0.0
    noise = np.random.default_rng(seed).normal(size=v.shape) * _lead_noise_sd(v)[:, None]
    return float(np.quantile(spatial_velocity(noise), 0.99))


def _segments(active: np.ndarray, merge: int) -> list[tuple[int, int]]:
    """Runs of ``True`` (inclusive index pairs), merged across gaps shorter than ``merge``."""
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > merge)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def qrs_window(time_ms: np.ndarray, values: np.ndarray, name: str = "ECG") -> QrsWindow:
    """Find the QRS window to fit in an ECG on a 1 ms grid.

    Complexes are runs of samples whose spatial velocity exceeds ``ACTIVITY_FRACTION`` of
    its peak, merged across gaps under ``MERGE_GAP_MS``; beats are complexes whose peak
    reaches ``BEAT_FRACTION`` of the largest. With several beats, the one closest (least
    squares, aligned on its peak) to the median beat is chosen. The activity threshold is
    raised to the level white noise of the recording's own size reaches
    (:func:`noise_floor`). The start is cut to ``MARGIN_START_MS`` before the onset only
    when the onset lies more than ``MAX_LEAD_IN_MS`` into the recording, and the end to
    ``MARGIN_END_MS`` after the QRS end only when at least ``MIN_TAIL_MS`` of recording
    follow it; otherwise the recording's own start or end is kept.

    Parameters
    ----------
    time_ms : (n_t,) float
        1 ms grid, ms (as returned by :func:`cdt_bayes.read_ecg_csv`).
    values : (n_leads, n_t) float
        Signals, mV.
    name : str
        Used in messages.

    Returns
    -------
    QrsWindow

    Raises
    ------
    InputFileError
        If the ECG is flat (no QRS activity to find).
    """
    t = np.asarray(time_ms, np.float64)
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[1] != t.size:
        raise ValueError(f"values must have shape (n_leads, {t.size}), got {v.shape}")
    s = spatial_velocity(v)
    peak = float(s.max()) if s.size else 0.0
    if not peak > 0:
        raise InputFileError(f"{name}: the ECG is flat; there is no QRS complex to fit")
    floor = noise_floor(v)
    segs = _segments(s > max(ACTIVITY_FRACTION * peak, floor), int(MERGE_GAP_MS))
    seg_peak = [float(s[a : b + 1].max()) for a, b in segs]
    beats: list[tuple[int, int]] = []
    for (a, b), p in zip(segs, seg_peak, strict=True):
        if p < BEAT_FRACTION * peak:
            continue
        if beats and a - beats[-1][0] < MIN_RR_MS:
            beats[-1] = (beats[-1][0], b)  # one beat: a split QRS
        else:
            beats.append((a, b))
    beat = _typical_beat(s, beats) if len(beats) > 1 else 0
    on, end = beats[beat]
    n = t.size
    lead_in = t[on] - t[0]
    tail = t[-1] - t[end]
    i0 = max(0, on - int(MARGIN_START_MS)) if lead_in > MAX_LEAD_IN_MS else 0
    i1 = min(n - 1, end + int(MARGIN_END_MS)) if tail >= MIN_TAIL_MS else n - 1
    if len(beats) > 1:  # never reach into the neighbouring beats
        if beat > 0:
            i0 = max(i0, beats[beat - 1][1] + 1)
        if beat < len(beats) - 1:
            i1 = min(i1, beats[beat + 1][0] - 1)
    cut = i0 > 0 or i1 < n - 1
    what = f"QRS {t[on]:g}-{t[end]:g} ms"
    if len(beats) > 1:
        what = f"{len(beats)} beats; beat {beat + 1} (the one closest to the median beat), " + what
    if cut:
        reason = f"{name}: {what}; fitting {t[i0]:g}-{t[i1]:g} ms of {t[0]:g}-{t[-1]:g} ms"
    else:
        reason = f"{name}: {what}; fitting the whole ECG ({t[0]:g}-{t[-1]:g} ms)"
    return QrsWindow(
        start_ms=float(t[i0]),
        end_ms=float(t[i1]),
        onset_ms=float(t[on]),
        end_qrs_ms=float(t[end]),
        n_beats=len(beats),
        beat=beat,
        cut=cut,
        reason=reason,
    )


def _typical_beat(s: np.ndarray, beats: list[tuple[int, int]]) -> int:
    """Index of the beat whose spatial velocity, aligned on its peak, is closest to the median."""
    before, after = 60, 140
    pad = np.pad(s, (before, after))
    peaks = [a + int(np.argmax(s[a : b + 1])) for a, b in beats]
    shapes = np.stack([pad[p : p + before + after] for p in peaks])
    med = np.median(shapes, axis=0)
    return int(np.argmin(((shapes - med) ** 2).sum(axis=1)))


def crop_ecg(
    time_ms: np.ndarray, values: np.ndarray, start_ms: float, end_ms: float, name: str = "ECG"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Keep ``start_ms <= t <= end_ms`` and restart the time at 0 at the window's start.

    Parameters
    ----------
    time_ms : (n_t,) float
        1 ms grid, ms.
    values : (n_leads, n_t) float
        Signals, mV.
    start_ms, end_ms : float
        Window in the recording's times, ms.
    name : str
        Used in error messages.

    Returns
    -------
    time_ms : (m,) float64
        The kept times minus the first kept time (the fit's time origin is the window's
        start), ms.
    values : (n_leads, m) float64
    offset_ms : float
        What was subtracted from the times, ms.

    Raises
    ------
    InputFileError
        If fewer than 10 samples fall in the window.
    """
    t = np.asarray(time_ms, np.float64)
    keep = (t >= start_ms - 1e-9) & (t <= end_ms + 1e-9)
    if keep.sum() < 10:
        raise InputFileError(
            f"{name}: window {start_ms:g}-{end_ms:g} ms holds {int(keep.sum())} samples "
            f"(the ECG spans {t[0]:g}-{t[-1]:g} ms); at least 10 are needed"
        )
    kept = t[keep]
    offset = float(kept[0])
    return kept - offset, np.asarray(values, np.float64)[:, keep], offset


#: Samples (ms on the 1 ms grid) whose median is a lead's level at each end of the window.
LEVEL_SAMPLES = 5
#: A level counts as "off zero" above this fraction of the ECG's peak |value| ...
LEVEL_FRACTION = 0.05
#: ... and above this many standard errors of the level under the estimated noise.
LEVEL_SE = 4.0


def window_levels(values: np.ndarray) -> dict:
    """The leads' levels at the start and end of a fitted window, and whether they are off zero.

    The model ECG is zero before the first PMJ fires and after the last node activates, so a
    simulated QRS window starts and ends near zero; clinical windows start on the PR segment
    and end on the ST segment, often tenths of a millivolt off zero (``dti004``: up to 10 %
    of the peak; the shared PTB record's QRS file: 21 % at its end). Used by the spec's
    ``baseline = "auto"``.

    Parameters
    ----------
    values : (n_leads, n_t) float
        The window, 1 ms grid, mV.

    Returns
    -------
    dict
        ``start_mV``, ``end_mV`` (per lead: medians of the first/last ``LEVEL_SAMPLES``),
        ``max_rel`` (largest |level| over the peak |value|), ``threshold_mV`` and ``off_zero``
        (whether a level exceeds ``max(LEVEL_FRACTION × peak, LEVEL_SE × its standard error)``,
        the largest lead's noise sd estimated from second differences, as in :func:`noise_floor`).
    """
    v = np.asarray(values, np.float64)
    n = min(LEVEL_SAMPLES, v.shape[1])
    start, end = np.median(v[:, :n], axis=1), np.median(v[:, -n:], axis=1)
    peak = float(np.abs(v).max()) if v.size else 0.0
    sd = float(_lead_noise_sd(v).max()) if v.shape[1] >= 3 else 0.0
    threshold = max(LEVEL_FRACTION * peak, LEVEL_SE * 1.2533 * sd / np.sqrt(n))  # se of a median of n
    top = float(max(np.abs(start).max(), np.abs(end).max())) if v.size else 0.0
    return {
        "start_mV": start,
        "end_mV": end,
        "max_rel": top / peak if peak > 0 else 0.0,
        "threshold_mV": float(threshold),
        "off_zero": bool(peak > 0 and top > threshold),
    }

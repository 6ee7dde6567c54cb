"""``cdt-bayes report``: a self-contained HTML (and PDF) report from a fit directory.

The fit directories are synthetic (numpy + meshio + xarray, no JAX inference): activation
maps from a few point sources on the shipped coarse mesh, two chains in two different
patterns, summaries from :mod:`cdt_bayes._summaries`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import meshio
import numpy as np
import pytest
from conftest import require
from helpers import box_mesh

from cdt_bayes import _plots as P
from cdt_bayes import _summaries as S
from cdt_bayes._errors import CdtBayesError
from cdt_bayes._report import (
    _time_prior_text,
    load_fit_dir,
    plain_summary,
    report_command,
    traffic_lights,
    write_report,
)

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
HEADINGS = (
    "1. The case",
    "2. Posterior activation maps",
    "3. The ECG",
    "4. Identifiability",
    "5. Diagnostics",
    "6. Caveats",
)
CHROMIUM = "/usr/bin/chromium"


# --------------------------------------------------------------------------------------
# Synthetic fit directories
# --------------------------------------------------------------------------------------


def _activation(nodes, sites_xyz, t0, cv=0.6):
    """Point-source activation (ms): min_k |x - s_k| / cv + t_k (straight-line stand-in)."""
    d = np.linalg.norm(nodes[None, :, :] - sites_xyz[:, None, :], axis=-1)  # (k, n)
    return (d / cv + t0[:, None]).min(0)


def _ecg_from(act, nodes, times, lead_dirs):
    """A smooth fake ECG (lead, time) from an activation map (dipole-like projections)."""
    c = nodes - nodes.mean(0)
    out = np.empty((lead_dirs.shape[0], times.size))
    w = np.exp(-0.5 * ((times[None, :] - act[:, None]) / 6.0) ** 2)  # (n, t) wavefront
    proj = c @ lead_dirs.T  # (n, lead)
    out[:] = (proj.T @ w) / nodes.shape[0] / 10.0
    return out


def make_fit_dir(
    out: Path,
    nodes,
    tets,
    surface=None,
    method="nuts",
    chains=2,
    draws=12,
    seed=0,
    with_nc=True,
):
    """Write a fit directory like ``cdt-bayes fit``: summary.json, activation_summary.vtu,
    ecg_posterior.csv, modes.npz and (optionally) a small posterior.nc."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n = nodes.shape[0]
    lab = surface if surface is not None else np.zeros(n, int)
    cand = np.flatnonzero(np.isin(lab, (1, 2)))
    if cand.size < 4:
        cand = np.arange(n)
    base_sites = [nodes[cand[rng.choice(cand.size, 3, replace=False)]] for _ in range(2)]
    if method == "map":
        chains, draws = 1, 1
    act = np.empty((chains, draws, n))
    for c in range(chains):
        for d in range(draws):
            s = base_sites[c % 2] + rng.normal(0, 1.5, (3, 3)) * (method != "map")
            act[c, d] = _activation(nodes, s, np.array([0.0, 4.0, 8.0]) + rng.uniform(0, 2, 3))
    act -= act.min(axis=-1, keepdims=True)
    prior = np.stack(
        [
            _activation(
                nodes, nodes[cand[rng.choice(cand.size, 3, replace=False)]], rng.uniform(0, 20, 3)
            )
            for _ in range(30)
        ]
    )
    times = np.arange(0.0, 121.0)
    lead_dirs = rng.normal(size=(len(LEADS), 3))
    model = np.stack(
        [
            [_ecg_from(act[c, d], nodes, times, lead_dirs) for d in range(draws)]
            for c in range(chains)
        ]
    )  # (c, d, lead, t)
    observed = _ecg_from(act[0, 0], nodes, times, lead_dirs) + rng.normal(0, 0.01, model.shape[2:])
    pp = model + rng.normal(0, 0.02, model.shape)
    node = S.activation_summary(act)
    ident = S.identifiability(act, prior)
    bands = S.ecg_bands(pp)
    r = S.ecg_correlation(observed, model.reshape((-1,) + observed.shape).mean(0))
    modes = S.activation_modes(act)
    summary = {
        "method": method,
        "n_pmj": 3,
        "seconds": 620.0,
        "ecg_correlation": float(np.nanmean(r)),
        "ecg_correlation_per_lead": {ld: float(v) for ld, v in zip(LEADS, r)},
        "leads": LEADS,
        "n_chains": chains,
        "n_draws": draws,
        "spec": "default",
        "n_nodes": n,
        "n_sites": int(cand.size),
        "velocities_inferred": True,
        "identifiability": {
            "mean_sd_ms": ident["mean_sd_ms"],
            "median_width90_ms": ident["median_width90_ms"],
            "mean_shrinkage": ident["mean_shrinkage"],
            "n_modes": int(modes["weights"].size),
            "n_modes_effective": modes["n_effective"],
            "mode_weights": [float(w) for w in modes["weights"][:10]],
            "total_activation_ms": ident["total_activation_ms"],
            "active_pmjs": {"median": 2.0, "q05": 1.0, "q95": 3.0, "of": 3},
        },
        "posterior_means": {"cv_scale": 1.1, "gain": 0.9, "shift_ms": 0.5, "sigma_mV": 0.02},
        "notes": [],
        "ecg_baseline": {"term": "linear", "source": "auto", "off_zero": True, "max_level_rel": 0.1},
        "map_search_rounds": 6,
        "map_search_smooth_ms": 4.0,
        "pmj_time_prior": {"qrs_onset_ms": 0.0, "t_max_ms": 40.0, "extended": False,
                           "selection": {"t_max_ms": {"spec": 40.0, "window": 139.0},
                                         "neg_log_joint": {"spec": -2300.0, "window": -2049.0}, "chosen": "spec"}},
        "forward_error": {"rms_ms": 1.23, "max_ms": 4.0, "mean_bias_ms": 0.4, "n_draws": 24, "seconds": 1.0,
                          "in_intervals": True},
        "stage_seconds": {"search": 95.0, "laplace": 5.2, "sampling": 519.0},
    }
    pd = {
        "activation_mean_ms": node["mean"],
        "activation_sd_ms": node["sd"],
        "activation_q05_ms": node["q05"],
        "activation_q95_ms": node["q95"],
        "activation_width90_ms": node["width90"],
        "p_early": ident["p_early"],
        "shrinkage": ident["shrinkage"],
    }
    if method == "nuts":
        diag = S.diagnostics(act, model, max_nodes=100)
        summary.update(
            {
                "max_rhat": diag["max_rhat"],
                "min_ess_bulk": diag["min_ess_bulk"],
                "min_ess_tail": diag["min_ess_tail"],
                "divergences": 1,
                "chains_agree": False,
                "mean_tree_steps": 31.0,
            }
        )
        pd["rhat"] = diag["rhat_activation"]
    if surface is not None:
        pd["surface"] = surface.astype(np.int32)
    meshio.write(
        str(out / "activation_summary.vtu"), meshio.Mesh(nodes, [("tetra", tets)], point_data=pd)
    )
    with open(out / "ecg_posterior.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_ms", "lead", "observed_mV", "mean_mV", "q05_mV", "q95_mV"])
        for li, ld in enumerate(LEADS):
            for ti, t in enumerate(times):
                w.writerow(
                    [
                        f"{t:g}",
                        ld,
                        observed[li, ti],
                        bands["mean"][li, ti],
                        bands["q05"][li, ti],
                        bands["q95"][li, ti],
                    ]
                )
    flat = model.reshape((-1,) + observed.shape)
    np.savez_compressed(
        out / "modes.npz",
        weights=modes["weights"],
        mean_maps=modes["mean_maps"].astype(np.float32),
        representative=modes["representative"],
        ecg=flat[modes["representative"]].astype(np.float32),
        time_ms=times,
        leads=np.asarray(LEADS),
        n_effective=modes["n_effective"],
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if with_nc:
        import xarray as xr

        post = xr.Dataset(
            {
                "cv_scale": (("chain", "draw"), 1.0 + 0.1 * rng.normal(size=(chains, draws))),
                "sigma_mV": (("chain", "draw"), 0.02 + 0.001 * rng.normal(size=(chains, draws))),
                "activation_ms": (("chain", "draw", "node"), act.astype(np.float32)),
            }
        )
        stats = xr.Dataset(
            {
                "lp": (
                    ("chain", "draw"),
                    np.array([[100.0], [-300.0]])[:chains] + rng.normal(size=(chains, draws)),
                ),
                "diverging": (("chain", "draw"), np.zeros((chains, draws), bool)),
            }
        )
        xr.DataTree.from_dict({"posterior": post, "sample_stats": stats}).to_netcdf(
            out / "posterior.nc", engine="h5netcdf"
        )
    return out


@pytest.fixture(scope="module")
def heart():
    from cdt_bayes._meshgen import default_mesh

    m = default_mesh()
    return np.asarray(m.nodes), np.asarray(m.tets), np.asarray(m.surface)


@pytest.fixture(scope="module")
def nuts_report(heart, tmp_path_factory):
    """A NUTS-like fit directory and its HTML + PDF report (built once for the module)."""
    base = tmp_path_factory.mktemp("report")
    fit = make_fit_dir(base / "fit", *heart)
    html_path = write_report(fit, base / "report.html", pdf=base / "report.pdf")
    return fit, html_path, base / "report.pdf"


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?!s)", data))


# --------------------------------------------------------------------------------------
# The HTML report
# --------------------------------------------------------------------------------------


def test_html_is_self_contained(nuts_report):
    _, html_path, _ = nuts_report
    text = html_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", text)
    assert len(imgs) >= 8
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(text.encode()) < 5e6  # 5k-node mesh: light enough to e-mail


def test_html_has_sections_lights_and_numbers(nuts_report):
    fit, html_path, _ = nuts_report
    text = html_path.read_text(encoding="utf-8")
    for h in HEADINGS:
        assert h in text, h
    assert re.search(r'class="light (green|amber|red)"', text)
    assert 'class="light red"' in text  # chains_agree is false in the synthetic summary
    s = json.loads((fit / "summary.json").read_text())
    tat = s["identifiability"]["total_activation_ms"]
    assert f"{tat['mean']:.0f} ms (90% interval {tat['q05']:.0f}–{tat['q95']:.0f} ms)" in text
    assert "Summary in plain language" in text
    assert "a level and a ramp per lead (chosen from the ECG: it starts or ends off zero)" in text
    assert "6 rounds of basin hopping" in text and "smoothed over ~4 ms" in text
    assert "uniform over 0–40 ms, kept over 0–139 ms (the whole ECG window), whose best fit was 251 nats" in text
    assert "620 s (10.3 min); search for the best fit 95 s, curvature at the optima 5.2 s, NUTS sampling 519 s" in text
    assert "Not a diagnosis" in text and "research" in text
    assert "PMJs that activate some tissue (median, 90% of draws)" in text and "2 of 3 (1–3)" in text
    assert "simulator error folded into the sd and intervals (RMS over nodes)" in text
    assert "1.2 ms (full solver at 24 draws)" in text
    for name in P.AHA_NAMES:  # the 17-segment table
        assert f"<td>{name}</td>" in text


def test_pdf_is_valid_with_pages(nuts_report):
    _, _, pdf = nuts_report
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert _pdf_pages(data) >= 6  # one page or more per section


def test_outputs_are_atomic_and_readable(nuts_report):
    _, html_path, pdf = nuts_report
    leftovers = [p.name for p in html_path.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    assert os.stat(html_path).st_mode & 0o044  # shareable, not mkstemp's 0600


def test_report_command_prints_outputs(heart, tmp_path, capsys):
    fit = make_fit_dir(tmp_path / "fit", *heart, method="map", with_nc=False)
    args = argparse.Namespace(dir=str(fit), out=None, pdf=None)
    assert report_command(args) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(fit / "report.html")
    assert "report:" in out.err  # progress on stderr
    text = (fit / "report.html").read_text()
    assert "point estimate" in text.lower()
    assert "no MCMC diagnostics" in text
    assert 'class="light red"' not in text or "ECG fit" in text
    assert "R-hat" not in text.split("5. Diagnostics")[1].split("6. Caveats")[0]


def test_report_without_surface_labels(tmp_path):
    nodes, tets = box_mesh((5, 5, 5), (20.0, 20.0, 20.0))
    fit = make_fit_dir(tmp_path / "fit", nodes, tets, surface=None, draws=8)
    out = write_report(fit, tmp_path / "r.html")
    text = out.read_text()
    for h in HEADINGS:
        assert h in text
    assert "No surface labels" in text


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(CdtBayesError, match="not a directory"):
        write_report(tmp_path / "nope", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name", ["summary.json", "activation_summary.vtu", "ecg_posterior.csv"])
def test_missing_required_file(nuts_report, tmp_path, name):
    fit = tmp_path / "fit"
    shutil.copytree(nuts_report[0], fit)
    (fit / name).unlink()
    with pytest.raises(
        CdtBayesError, match=re.escape(f"{name}: missing — is this a 'cdt-bayes fit'")
    ):
        write_report(fit, tmp_path / "r.html", pdf=tmp_path / "r.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]  # nothing written


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("summary.json", "{not json", "summary.json: not a valid JSON"),
        ("summary.json", "[1, 2]", "summary.json: not a fit summary"),
        ("activation_summary.vtu", "garbage", "activation_summary.vtu: unreadable"),
        (
            "ecg_posterior.csv",
            "time_ms,lead,observed_mV\n0,I,1\n",
            "ecg_posterior.csv: missing column",
        ),
        (
            "ecg_posterior.csv",
            "time_ms,lead,observed_mV,mean_mV,q05_mV,q95_mV\n0,I,x,1,1,1\n",
            "ecg_posterior.csv: line 2",
        ),
        ("modes.npz", "garbage", "modes.npz: unreadable"),
        ("posterior.nc", "garbage", "posterior.nc: unreadable"),
    ],
)
def test_corrupt_files(nuts_report, tmp_path, name, content, match):
    fit = tmp_path / "fit"
    shutil.copytree(nuts_report[0], fit)
    (fit / name).write_text(content)
    with pytest.raises(CdtBayesError, match=re.escape(match)):
        load_fit_dir(fit)


def test_optional_files_missing_are_noted(nuts_report, tmp_path):
    fit = tmp_path / "fit"
    shutil.copytree(nuts_report[0], fit)
    (fit / "modes.npz").unlink()
    (fit / "posterior.nc").unlink()
    data = load_fit_dir(fit)
    assert data.modes is None and data.traces == {}
    assert any("modes.npz" in n for n in data.notes)


def test_mismatched_modes(nuts_report, tmp_path):
    fit = tmp_path / "fit"
    shutil.copytree(nuts_report[0], fit)
    z = dict(np.load(fit / "modes.npz"))
    z["mean_maps"] = z["mean_maps"][:, :10]
    np.savez(fit / "modes.npz", **z)
    with pytest.raises(CdtBayesError, match="modes.npz: mean_maps has shape"):
        load_fit_dir(fit)


# --------------------------------------------------------------------------------------
# Pieces: traffic lights, words, AHA segments, figures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, level",
    [
        ("max_rhat", 1.005, "green"),
        ("max_rhat", 1.03, "amber"),
        ("max_rhat", 1.2, "red"),
        ("min_ess_bulk", 500, "green"),
        ("min_ess_bulk", 150, "amber"),
        ("min_ess_bulk", 50, "red"),
        ("min_ess_tail", 400, "green"),
        ("min_ess_tail", 99, "red"),
        ("divergences", 0, "green"),
        ("divergences", 5, "amber"),
        ("divergences", 50, "red"),
        ("ecg_correlation", 0.97, "green"),
        ("ecg_correlation", 0.92, "amber"),
        ("ecg_correlation", 0.5, "red"),
    ],
)
def test_traffic_light_thresholds(key, value, level):
    s = {
        "method": "nuts",
        "n_chains": 4,
        "n_draws": 1000,
        "max_rhat": 1.0,
        "min_ess_bulk": 1000,
        "min_ess_tail": 1000,
        "divergences": 0,
        "chains_agree": True,
        "ecg_correlation": 0.99,
    }
    s[key] = value
    lights = traffic_lights(s)
    names = {
        "max_rhat": "R-hat",
        "min_ess_bulk": "bulk",
        "min_ess_tail": "tail",
        "divergences": "divergent",
        "ecg_correlation": "ECG fit",
    }
    (lt,) = [x for x in lights if names[key] in x.name]
    assert lt.level == level
    assert bool(lt.advice) == (level != "green")
    assert all(x.level == "green" for x in lights if x is not lt)


@pytest.mark.parametrize("within, level", [(1.005, "green"), (1.03, "amber"), (3.3, "red"), (None, None)])
def test_within_optimum_rhat_light(within, level):
    s = {
        "method": "nuts",
        "n_chains": 4,
        "n_draws": 500,
        "max_rhat": 3.8,
        "min_ess_bulk": 1000,
        "min_ess_tail": 1000,
        "divergences": 0,
        "chains_agree": False,
        "max_rhat_within_optima": within,
        "ecg_correlation": 0.99,
    }
    found = [x for x in traffic_lights(s) if "within one starting optimum" in x.name]
    if level is None:
        assert not found
    else:
        assert [x.level for x in found] == [level]
        assert bool(found[0].advice) == (level != "green")
    # chains that agree need no such light
    assert not [x for x in traffic_lights({**s, "chains_agree": True, "max_rhat": 1.0}) if "within" in x.name]


@pytest.mark.parametrize("applied", [True, False])
def test_stacking_weights_light(applied):
    s = {"method": "nuts", "n_chains": 3, "n_draws": 500, "max_rhat": 3.0, "min_ess_bulk": 10,
         "min_ess_tail": 10, "divergences": 0, "chains_agree": False, "ecg_correlation": 0.99,
         "chain_stacking": {"weights": [0.61, 0.39, 0.0], "elpd_loo": [-1.0, -1.2, -9.0], "applied": applied}}
    found = [x for x in traffic_lights(s) if "stacking" in x.name]
    if applied:
        assert [x.value for x in found] == ["0.61, 0.39, 0.00"] and found[0].level == "amber" and found[0].advice
    else:  # --combine-chains equal: the summaries are not weighted, so no such row
        assert not found


@pytest.mark.parametrize("sat, level", [(0.0, "green"), (0.05, "green"), (0.3, "amber"), (1.0, "amber"), (None, None)])
def test_tree_cap_light(sat, level):
    s = {"method": "nuts", "n_chains": 4, "n_draws": 500, "max_rhat": 1.0, "min_ess_bulk": 1000,
         "min_ess_tail": 1000, "divergences": 0, "chains_agree": True, "ecg_correlation": 0.99,
         "max_tree_depth": 6, "tree_depth_saturation": sat}
    found = [x for x in traffic_lights(s) if "tree-depth cap" in x.name]
    if level is None:
        assert not found
    else:
        assert [x.level for x in found] == [level] and "(depth 6)" in found[0].value
        assert bool(found[0].advice) == (level != "green")


def test_map_has_no_mcmc_lights():
    lights = traffic_lights({"method": "map", "ecg_correlation": 0.96})
    assert [x.name.split()[0] for x in lights] == ["ECG"]


def test_plain_summary_words(nuts_report):
    data = load_fit_dir(nuts_report[0])
    text = plain_summary(data)
    assert "Total ventricular activation time is" in text
    assert "90% interval" in text
    assert "activation patterns" in text or "one activation pattern" in text
    mapped = load_fit_dir(nuts_report[0])
    mapped.summary["method"] = "map"
    assert "point estimate" in plain_summary(mapped)


def test_aha_segments_on_default_mesh(heart):
    nodes, tets, surface = heart
    frame = P.aha_frame(nodes, surface, tets)
    seg = P.aha_segments(nodes, surface, frame=frame)
    assert seg.shape == (nodes.shape[0],) and seg.min() == -1 and seg.max() == 16
    assert np.all(np.bincount(seg[seg >= 0], minlength=17) > 10)  # every segment populated
    assert np.all(seg[surface == 2] == -1)  # RV endocardium is never LV
    assert np.all(seg[surface == 1] >= 0)
    rv_c = nodes[surface == 2].mean(0)
    dist = np.linalg.norm(nodes - rv_c, axis=1)
    septal = np.isin(seg, [1, 2, 7, 8, 13])
    lateral = np.isin(seg, [4, 5, 10, 11, 15])
    assert dist[septal].mean() < dist[lateral].mean() - 10.0  # septum faces the RV
    anterior = np.isin(seg, [0, 6, 12])
    inferior = np.isin(seg, [3, 9, 14])
    assert nodes[anterior, 1].mean() > nodes[inferior, 1].mean()  # +y is anterior
    h = frame["height"]
    assert (
        h[seg == 16].mean()
        > h[np.isin(seg, [12, 13, 14, 15])].mean()
        > h[np.isin(seg, range(6))].mean()
    )


def test_surface_triangles_closed_box():
    nodes, tets = box_mesh((2, 2, 2), (1.0, 1.0, 1.0))
    f = P.surface_triangles(nodes, tets[:, [0, 2, 1, 3]])  # any vertex order
    assert f.shape == (6 * 2 * 2 * 2, 3)
    x = nodes[f]
    n = np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
    outward = np.einsum("ij,ij->i", n, x.mean(1) - 0.5)
    assert np.all(outward > 0)


def test_figures_return_figures():
    from matplotlib.figure import Figure

    t = np.arange(50.0)
    obs = np.sin(t / 8)[None].repeat(3, 0)
    fig = P.plot_ecg_12lead(t, ["V1", "II", "X1"], obs, obs * 0.9, obs - 0.1, obs + 0.1)
    assert isinstance(fig, Figure)
    texts = [tx.get_text() for ax in fig.axes for tx in ax.texts]
    assert "V1" in texts and "X1" in texts and "(lead not used)" in texts
    fig = P.plot_bullseye(np.arange(17.0), "x", "ms")
    labels = [tx.get_text() for tx in fig.axes[0].texts]
    assert "16" in labels and "0" in labels
    assert P.fig_to_png(fig)[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------
# Looking at it: headless chromium renders a non-blank page
# --------------------------------------------------------------------------------------


def test_chromium_renders_report(nuts_report, tmp_path):
    require(os.path.exists(CHROMIUM), f"{CHROMIUM} not installed")
    import matplotlib.image as mpimg

    _, html_path, _ = nuts_report
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        html_path.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=90, capture_output=True)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (4000, 1280)
    nonwhite = (img.min(-1) < 0.9).mean()
    assert nonwhite > 0.05, nonwhite  # text, tables and figures, not a blank page
    colourful = (img.max(-1) - img.min(-1) > 0.3).mean()
    assert colourful > 0.01, colourful  # the coloured maps were drawn


@pytest.mark.parametrize(
    "tp, expected",
    [
        ({}, ""),
        ({"qrs_onset_ms": 0.0, "t_max_ms": 40.0, "extended": False}, "uniform over 0–40 ms"),
        ({"qrs_onset_ms": 33.0, "t_max_ms": 73.0, "extended": True},
         "uniform over 0–73 ms (raised by the QRS onset, 33 ms into the window)"),
        ({"t_max_ms": 153.0, "selection": {"t_max_ms": {"spec": 40.0, "window": 153.0},
                                           "neg_log_joint": {"spec": -1200.0, "window": -2450.4}, "chosen": "window"}},
         "uniform over 0–153 ms, the whole ECG window, chosen over 0–40 ms: its best fit was 1250 nats more probable"),
        ({"qrs_onset_ms": 33.0, "t_max_ms": 73.0, "extended": True,
          "selection": {"t_max_ms": {"spec": 73.0, "window": 160.0}, "neg_log_joint": {"spec": -900.0, "window": -880.0},
                        "chosen": "spec"}},
         "uniform over 0–73 ms (raised by the QRS onset, 33 ms into the window), kept over 0–160 ms (the whole ECG "
         "window), whose best fit was 20 nats less probable"),
        ({"t_max_ms": 40.0, "selection": {"t_max_ms": {"spec": 40.0, "window": 150.0}, "hop_rounds": 4,
                                          "neg_log_joint": {"spec": -561.3, "window": -607.2}, "chosen": "window"}},
         "uniform over 0–150 ms, the whole ECG window, chosen over 0–40 ms: its best fit was 46 nats more probable "
         "(PMJs the ECG does not need may then start late, anywhere); a close call, decided after 4 rounds of basin "
         "hops under each"),
    ],
)
def test_time_prior_in_words(tp, expected):
    """The report's row on the PMJ start-time prior: the bound, a lead-in, and the choice with its margin."""
    text = _time_prior_text(tp)
    assert text.startswith(expected) and (expected or not text)

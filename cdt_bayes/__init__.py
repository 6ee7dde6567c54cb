"""cdt_bayes: Bayesian cardiac digital twins from the 12-lead ECG.

Pipeline (one module per stage, data flows one way):
``geometry → eikonal → ecg → model → inference → summaries → report``.
Units everywhere: mm, ms, mm/ms, mV. Importing does no work.
"""

from ._coarsen import MeshMap, coarsen_mesh, inference_mesh
from ._ecg import LeadField, ecg_time_grid, lead_matrix, load_lead_field, simulate_ecg
from ._eikonal import (
    EikonalGeometry,
    EikonalInfo,
    EikonalParams,
    activation_times,
    conduction_metric,
    eikonal_geometry,
    eikonal_params,
    solve_eikonal,
)
from ._errors import CdtBayesError, InputFileError, MeshError, SpecError
from ._fibres import rule_based_fibres
from ._geometry import (
    BASE,
    EPI,
    INTERIOR,
    LV_ENDO,
    RV_ENDO,
    Mesh,
    admissible_sites,
    boundary_faces,
    endo_distance,
    locate_points,
    refine_mesh,
)
from ._inference import (
    FitProblem,
    FitResult,
    build_problem,
    evidence_weights,
    find_map,
    fit,
    forward_error,
    laplace_optima,
    posterior_activation,
)
from ._io import (
    atomic_output_dir,
    load_mesh,
    read_ecg_csv,
    read_electrodes_csv,
    read_pmj_csv,
    read_wfdb_ecg,
    save_mesh_vtu,
    write_ecg_csv,
)
from ._meshgen import default_electrodes_table, default_mesh, generate_biventricular
from ._model import (
    BaselineNormal,
    LayerPrior,
    ModelData,
    ModelSpec,
    baseline_basis,
    baseline_conditional,
    cdt_model,
    dictionary_activation,
    list_specs,
    load_spec,
)
from ._outputs import to_inference_data, write_fit_outputs, write_posterior_netcdf
from ._qrs import QrsWindow, crop_ecg, qrs_window, window_levels

__version__ = "0.1.0"

__all__ = [
    "BASE",
    "BaselineNormal",
    "EPI",
    "INTERIOR",
    "LV_ENDO",
    "RV_ENDO",
    "CdtBayesError",
    "EikonalGeometry",
    "EikonalInfo",
    "EikonalParams",
    "FitProblem",
    "FitResult",
    "InputFileError",
    "LayerPrior",
    "LeadField",
    "Mesh",
    "MeshError",
    "MeshMap",
    "ModelData",
    "ModelSpec",
    "QrsWindow",
    "SpecError",
    "activation_times",
    "admissible_sites",
    "atomic_output_dir",
    "boundary_faces",
    "baseline_basis",
    "baseline_conditional",
    "build_problem",
    "cdt_model",
    "coarsen_mesh",
    "crop_ecg",
    "conduction_metric",
    "default_electrodes_table",
    "default_mesh",
    "dictionary_activation",
    "ecg_time_grid",
    "eikonal_geometry",
    "eikonal_params",
    "endo_distance",
    "evidence_weights",
    "find_map",
    "fit",
    "forward_error",
    "generate_biventricular",
    "inference_mesh",
    "laplace_optima",
    "lead_matrix",
    "list_specs",
    "load_lead_field",
    "load_mesh",
    "load_spec",
    "locate_points",
    "posterior_activation",
    "qrs_window",
    "read_ecg_csv",
    "read_electrodes_csv",
    "read_pmj_csv",
    "read_wfdb_ecg",
    "refine_mesh",
    "rule_based_fibres",
    "save_mesh_vtu",
    "simulate_ecg",
    "solve_eikonal",
    "to_inference_data",
    "write_ecg_csv",
    "window_levels",
    "write_fit_outputs",
    "write_posterior_netcdf",
]

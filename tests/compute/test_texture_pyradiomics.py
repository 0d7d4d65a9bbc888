"""Texture features against pyradiomics on random volumes, for the features whose definitions coincide.

Where pyradiomics (3.x) and this package (IBSI 1) differ, and how the comparison lines them up:

- Discretisation: pyradiomics bins the image itself (default binWidth=25). Here it gets the already
  discretised levels with binWidth=1, which maps level x to x − min + 1; the ROI therefore always contains
  level 1 so that the levels are unchanged.
- Ng: pyradiomics takes Ng from the data (the highest level in the ROI); IBSI uses the number of levels of
  the discretisation. Only the normalised inverse difference (moment) use Ng, and they agree when
  ``n_levels`` is the ROI's highest level, as here.
- Aggregation: pyradiomics computes GLCM and GLRLM features per direction and averages them (its default
  ``weightingNorm=None``), which is IBSI "3D averaged"; GLSZM, GLDM and NGTDM are volumetric, IBSI "3D".
  With ``force2D`` pyradiomics pools the slices per in-plane direction, i.e. IBSI "2.5D direction-merged";
  the merged and 2-D averaged methods have no pyradiomics equivalent.
- Names: pyradiomics SumSquares = IBSI joint variance, JointEnergy = angular second moment,
  MaximumProbability = joint maximum, Id/Idn/Idm/Idmn = inverse difference (moment) and their normalised
  forms, GLDM with ``gldm_a=0`` = NGLDM (its "small/large dependence" = IBSI "low/high dependence").
- Not in pyradiomics: GLCM sum variance (equal to cluster tendency) and dissimilarity (equal to difference
  average) as separate features, GLDZM, NGLDM normalised grey level non-uniformity, dependence count
  percentage and energy. pyradiomics' GLCM MCC is not an IBSI feature.
- Undefined values: pyradiomics substitutes numbers where a formula divides by zero (e.g. coarseness 1e6,
  correlation 1 for a flat region); here they are NaN (see ``gateway.compute.features.texture``). The random
  volumes below avoid those cases.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage

from gateway.compute.features.texture import texture_features

radiomics = pytest.importorskip(
    "radiomics", reason="pyradiomics is not installed (pip install --no-build-isolation pyradiomics)"
)
sitk = pytest.importorskip("SimpleITK", reason="pyradiomics needs SimpleITK")

from radiomics import glcm, gldm, glrlm, glszm, ngtdm  # noqa: E402

logging.getLogger("radiomics").setLevel(logging.ERROR)

# (pyradiomics class, our aggregation, {pyradiomics feature: our key})
COMPARED = [
    (glcm.RadiomicsGLCM, "3D averaged", {
        "Autocorrelation": "cm_auto_corr", "JointAverage": "cm_joint_avg", "ClusterProminence": "cm_clust_prom",
        "ClusterShade": "cm_clust_shade", "ClusterTendency": "cm_clust_tend", "Contrast": "cm_contrast",
        "Correlation": "cm_corr", "DifferenceAverage": "cm_diff_avg", "DifferenceEntropy": "cm_diff_entr",
        "DifferenceVariance": "cm_diff_var", "JointEnergy": "cm_energy", "JointEntropy": "cm_joint_entr",
        "Imc1": "cm_info_corr_1", "Imc2": "cm_info_corr_2", "Idm": "cm_inv_diff_mom",
        "Idmn": "cm_inv_diff_mom_norm", "Id": "cm_inv_diff", "Idn": "cm_inv_diff_norm",
        "InverseVariance": "cm_inv_var", "MaximumProbability": "cm_joint_max", "SumAverage": "cm_sum_avg",
        "SumEntropy": "cm_sum_entr", "SumSquares": "cm_joint_var",
    }),
    (glrlm.RadiomicsGLRLM, "3D averaged", {
        "ShortRunEmphasis": "rlm_sre", "LongRunEmphasis": "rlm_lre", "LowGrayLevelRunEmphasis": "rlm_lgre",
        "HighGrayLevelRunEmphasis": "rlm_hgre", "ShortRunLowGrayLevelEmphasis": "rlm_srlge",
        "ShortRunHighGrayLevelEmphasis": "rlm_srhge", "LongRunLowGrayLevelEmphasis": "rlm_lrlge",
        "LongRunHighGrayLevelEmphasis": "rlm_lrhge", "GrayLevelNonUniformity": "rlm_glnu",
        "GrayLevelNonUniformityNormalized": "rlm_glnu_norm", "RunLengthNonUniformity": "rlm_rlnu",
        "RunLengthNonUniformityNormalized": "rlm_rlnu_norm", "RunPercentage": "rlm_r_perc",
        "GrayLevelVariance": "rlm_gl_var", "RunVariance": "rlm_rl_var", "RunEntropy": "rlm_rl_entr",
    }),
    (glszm.RadiomicsGLSZM, "3D", {
        "SmallAreaEmphasis": "szm_sze", "LargeAreaEmphasis": "szm_lze", "LowGrayLevelZoneEmphasis": "szm_lgze",
        "HighGrayLevelZoneEmphasis": "szm_hgze", "SmallAreaLowGrayLevelEmphasis": "szm_szlge",
        "SmallAreaHighGrayLevelEmphasis": "szm_szhge", "LargeAreaLowGrayLevelEmphasis": "szm_lzlge",
        "LargeAreaHighGrayLevelEmphasis": "szm_lzhge", "GrayLevelNonUniformity": "szm_glnu",
        "GrayLevelNonUniformityNormalized": "szm_glnu_norm", "SizeZoneNonUniformity": "szm_zsnu",
        "SizeZoneNonUniformityNormalized": "szm_zsnu_norm", "ZonePercentage": "szm_z_perc",
        "GrayLevelVariance": "szm_gl_var", "ZoneVariance": "szm_zs_var", "ZoneEntropy": "szm_zs_entr",
    }),
    (gldm.RadiomicsGLDM, "3D", {
        "SmallDependenceEmphasis": "ngl_lde", "LargeDependenceEmphasis": "ngl_hde",
        "LowGrayLevelEmphasis": "ngl_lgce", "HighGrayLevelEmphasis": "ngl_hgce",
        "SmallDependenceLowGrayLevelEmphasis": "ngl_ldlge", "SmallDependenceHighGrayLevelEmphasis": "ngl_ldhge",
        "LargeDependenceLowGrayLevelEmphasis": "ngl_hdlge", "LargeDependenceHighGrayLevelEmphasis": "ngl_hdhge",
        "GrayLevelNonUniformity": "ngl_glnu", "DependenceNonUniformity": "ngl_dcnu",
        "DependenceNonUniformityNormalized": "ngl_dcnu_norm", "GrayLevelVariance": "ngl_gl_var",
        "DependenceVariance": "ngl_dc_var", "DependenceEntropy": "ngl_dc_entr",
    }),
    (ngtdm.RadiomicsNGTDM, "3D", {
        "Coarseness": "ngt_coarseness", "Contrast": "ngt_contrast", "Busyness": "ngt_busyness",
        "Complexity": "ngt_complexity", "Strength": "ngt_strength",
    }),
]


def _random_lesion(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(6, 14)), int(rng.integers(10, 20)), int(rng.integers(10, 20)))
    n_levels = int(rng.integers(3, 12))
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), float(rng.uniform(0.0, 1.5)))
    scaled = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-12)
    image = 1 + np.minimum(scaled * n_levels, n_levels - 1).astype(int)
    centre = np.array(shape) / 2
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    radii = np.array(shape) / 2.2
    mask = (((grid - centre) / radii) ** 2).sum(axis=-1) <= 1.0
    mask &= rng.random(shape) < 0.95  # a few holes
    # pyradiomics renumbers levels from the ROI's lowest; make that 1 so both see the same grey levels.
    image[tuple(np.argwhere(mask)[0])] = 1
    return image, mask, int(image[mask].max())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_pyradiomics_where_definitions_coincide(backend: str, seed: int) -> None:
    image, mask, n_levels = _random_lesion(seed)
    ours = {
        (value.key, value.aggregation): value.value
        for value in texture_features(image, mask, n_levels, aggregations=("3D averaged",), backend=backend)
    }
    sitk_image = sitk.GetImageFromArray(image.astype(np.float64))
    sitk_mask = sitk.GetImageFromArray(mask.astype(np.uint8))
    mismatches = []
    for extractor_class, aggregation, names in COMPARED:
        extractor = extractor_class(
            sitk_image, sitk_mask, binWidth=1, distances=[1], symmetricalGLCM=True, gldm_a=0, force2D=False
        )
        extractor.enableAllFeatures()
        theirs = extractor.execute()
        for their_name, our_key in names.items():
            expected = float(theirs[their_name])
            actual = ours[(our_key, aggregation)]
            if not np.isclose(actual, expected, rtol=1e-9, atol=1e-12):
                mismatches.append(f"{their_name} vs {our_key}: pyradiomics {expected!r}, ours {actual!r}")
    assert not mismatches, "\n".join(mismatches)

"""The noise of a DP step (mipflow.node.controls.dp_noise): OpenDP's distributions and costs, blocks splitting the budget.

OpenDP draws from the operating system's CSPRNG and cannot be seeded: the statistical tests use many
draws and bounds several standard errors wide (false alarm rate well under 1e-4 each).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mipflow.node.controls.dp_noise import QueryNoise

DRAWS = 20_000


# --------------------------------------------------------------------------- the noise


def _discrete_laplace_variance(scale: float) -> float:
    q = math.exp(-1.0 / scale)
    return 2 * q / (1 - q) ** 2


@pytest.mark.parametrize("mechanism,integer", [("laplace", True), ("laplace", False),
                                               ("gaussian", True), ("gaussian", False)])
def test_noise_has_the_mechanisms_distribution(mechanism, integer):
    noise = QueryNoise(mechanism, epsilon=0.8, delta=1e-6, blocks=4)
    sensitivity = 1 if integer else 2.5
    scale = noise.scale(sensitivity)
    if mechanism == "laplace":
        assert scale == pytest.approx(sensitivity * 4 / 0.8, rel=1e-12)
    else:
        assert scale == pytest.approx(sensitivity / math.sqrt(2 * noise.rho / 4), rel=1e-12)
    draws = noise.add([0] * DRAWS if integer else [0.0] * DRAWS, sensitivity, block="b", integer=True
                      if integer else False).astype(float)
    assert draws.std() > 0 and np.count_nonzero(draws) > DRAWS / 2  # the noise is there
    if mechanism == "laplace":
        expected_var = _discrete_laplace_variance(scale) if integer else 2 * scale ** 2
        kurtosis = 6.0
    else:
        expected_var, kurtosis = scale ** 2, 3.0  # discrete Gaussian: sigma**2 up to e**(-2 pi**2 sigma**2)
    # Var(s^2) ~ (mu4 - sigma^4) / n: five standard errors
    assert abs(draws.var() / expected_var - 1) < 5 * math.sqrt((kurtosis - 1) / DRAWS)
    assert abs(draws.mean()) < 5 * math.sqrt(expected_var / DRAWS)  # unbiased
    if not integer:
        reference = stats.laplace(scale=scale) if mechanism == "laplace" else stats.norm(scale=scale)
        assert stats.kstest(draws, reference.cdf).pvalue > 1e-4


def test_step_cost_is_what_opendp_maps_and_blocks_split_it():
    for mechanism in ("laplace", "gaussian"):
        noise = QueryNoise(mechanism, epsilon=0.6, delta=1e-6, blocks=3)
        for block in ("a", "b", "c"):  # three blocks, two disjoint parts each
            for part in ("d0", "d1"):
                noise.add([5, 7], 1, block=block, part=part, integer=True)
        cost = noise.cost()
        assert cost.epsilon == pytest.approx(0.6, rel=1e-9)  # parts compose in parallel, blocks sequentially
        if mechanism == "gaussian":
            assert cost.delta == 1e-6 and cost.rho == pytest.approx(noise.rho, rel=1e-12)
            # OpenDP's conversion is at least as tight as rho + 2 sqrt(rho log(1/delta)) (Bun & Steinke)
            assert cost.epsilon <= cost.rho + 2 * math.sqrt(cost.rho * math.log(1e6))

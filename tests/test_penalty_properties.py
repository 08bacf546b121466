"""Property tests of every penalty over sample shapes, dtypes (float32, float64, bfloat16) and
batch sizes down to 1, against closed forms (a linear critic's gradient is w everywhere)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_penalties import CLOSED_FORMS, LinearCritic

from lit_gp.penalties import METHODS

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
# Relative error of the computed norm per dtype (bfloat16 keeps 8 significant bits; its sums over
# up to 4*4*4 elements lose a few more).
NORM_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}

closed_forms = st.sampled_from([case.values for case in CLOSED_FORMS])
sample_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
batch_sizes = st.integers(1, 6)
dtypes = st.sampled_from(list(DTYPES.values()))


@settings(max_examples=150, deadline=None)
@given(
    form=closed_forms,
    shape=sample_shapes,
    batch=batch_sizes,
    dtype=dtypes,
    scale=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_linear_critic_closed_form(form, shape, batch, dtype, scale, seed) -> None:
    name, options, loss_of, coef_of, points = form
    generator = torch.Generator().manual_seed(seed)
    w = (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    real = torch.randn(batch, *shape, generator=generator, dtype=torch.float64).to(dtype)
    fake = torch.randn(batch, *shape, generator=generator, dtype=torch.float64).to(dtype)
    norm = torch.linalg.vector_norm(w.double()).item()  # of the weights as stored in dtype

    critic = LinearCritic(w)
    result = METHODS[name](critic, real, fake, **options)

    assert result.loss.dim() == 0 and bool(torch.isfinite(result.loss))
    assert result.grad_norm.shape == (points * batch,)
    assert not result.grad_norm.requires_grad
    tolerance = NORM_TOLERANCE[dtype]
    torch.testing.assert_close(
        result.grad_norm.double(),
        torch.full((points * batch,), norm, dtype=torch.float64),
        rtol=tolerance,
        atol=tolerance,
    )
    # The loss follows from the norm; a power p multiplies the norm's relative error by p.
    power = options.get("p", 6.0) if name == "wgan_div" else 2.0
    expected = loss_of(norm)
    assert math.isclose(
        result.loss.double().item(), expected, rel_tol=4 * power * tolerance, abs_tol=tolerance
    )
    # The loss trains the critic: d loss / d w = coef(||w||) * w by hand.
    (grad_w,) = torch.autograd.grad(result.loss, critic.w)
    torch.testing.assert_close(
        grad_w.double(), coef_of(norm) * w.double(), rtol=4 * power * tolerance, atol=tolerance * 10
    )


@settings(max_examples=60, deadline=None)
@given(shape=sample_shapes, batch=batch_sizes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_each_sample_gets_its_own_norm(shape, batch, dtype, seed) -> None:
    """A batch of B gives the norms of B batches of 1 (no norm over the whole batch, no
    flattening bug), for a critic whose gradient differs per sample: D(x) = sum(sin(x))."""
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(batch, *shape, generator=generator, dtype=torch.float64).to(dtype)
    fake = torch.randn(batch, *shape, generator=generator, dtype=torch.float64).to(dtype)

    def critic(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x).flatten(1).sum(1)

    for name in ("r1", "r2"):
        together = METHODS[name](critic, real, fake).grad_norm
        alone = torch.cat(
            [
                METHODS[name](critic, real[i : i + 1], fake[i : i + 1]).grad_norm
                for i in range(batch)
            ]
        )
        torch.testing.assert_close(together, alone)
        # By hand: ||cos(x)|| per sample.
        points = real if name == "r1" else fake
        expected = torch.linalg.vector_norm(torch.cos(points.double()).flatten(1), dim=1)
        tolerance = NORM_TOLERANCE[dtype]
        torch.testing.assert_close(
            together.double(), expected, rtol=tolerance * 4, atol=tolerance * 4
        )

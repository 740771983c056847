"""Shared fixtures: a linear-Gaussian VAE whose marginal likelihood and posterior are known in closed form."""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import Tensor, nn

from lagvae.models.vae import VAE


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(x; W z + b, s^2 I), so p(x) = N(b, W W^T + s^2 I) under p(z) = N(0, I)."""

    def __init__(self, w: Tensor, b: Tensor, s: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(b)
        self.s = s

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        mean = z @ self.w.T + self.b  # [B, S, X]
        log_density = -0.5 * ((x.unsqueeze(1) - mean) / self.s).pow(2) - math.log(self.s) - 0.5 * math.log(2 * math.pi)
        return log_density.sum(-1)

    def n_units(self, x: Tensor) -> Tensor:
        return torch.tensor(x.numel())

    @torch.no_grad()
    def log_marginal(self, x: Tensor) -> Tensor:
        cov = self.w @ self.w.T + self.s**2 * torch.eye(self.w.shape[0])
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact p(z|x) = N(m, C): C = (I + W^T W / s^2)^-1, m = C W^T (x - b) / s^2."""
        d = self.w.shape[1]
        cov = torch.linalg.inv(torch.eye(d) + self.w.T @ self.w / self.s**2)
        mean = (x - self.b) @ self.w @ cov.T / self.s**2
        return mean, cov


class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag(e^logvar)): deliberately not the exact posterior unless set so."""

    def __init__(self, x_dim: int, z_dim: int, logvar: float = -1.0) -> None:
        super().__init__()
        self.a = nn.Linear(x_dim, z_dim)
        self.logvar = nn.Parameter(torch.full((z_dim,), logvar))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.a(x)
        return mu, self.logvar.expand_as(mu)


def linear_gaussian_vae(x_dim: int = 3, z_dim: int = 2, seed: int = 0) -> tuple[VAE, LinearGaussianDecoder]:
    gen = torch.Generator().manual_seed(seed)
    decoder = LinearGaussianDecoder(torch.randn(x_dim, z_dim, generator=gen), torch.randn(x_dim, generator=gen), 0.7)
    return VAE(LinearEncoder(x_dim, z_dim), decoder), decoder


def match_encoder_to_posterior(vae: VAE, dec: LinearGaussianDecoder, widen: float = 1.5) -> None:
    """Set q(z|x) to the exact posterior mean with a diagonal, `widen`-times-larger variance: a good,
    imperfect proposal (diagonal where the truth is not)."""
    d = dec.w.shape[1]
    with torch.no_grad():
        cov = torch.linalg.inv(torch.eye(d) + dec.w.T @ dec.w / dec.s**2)
        a = cov @ dec.w.T / dec.s**2
        vae.encoder.a.weight.copy_(a)
        vae.encoder.a.bias.copy_(-a @ dec.b)
        vae.encoder.logvar.copy_(torch.log(torch.diagonal(cov) * widen))


# Tests use tiny models, for which one thread is several times faster than two (docs/BENCHMARKS.md).
torch.set_num_threads(1)

# Property tests must not flake on a loaded 2-core machine: no deadline, a fixed number of examples, and
# under CI (`CI` set, as .ci/run does) the same examples every run.
settings.register_profile("dev", deadline=None, max_examples=50)
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _restore_threads():
    """A CLI run sets torch's thread count (--threads); the next test must not inherit it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class InlinePool:
    """`compare`'s worker pool, run in this process: a spawned worker imports torch anew (seconds a cell),
    which tests of the grid's tables, resumption and failures do not need. The tests of what the spawned
    workers themselves do (a killed compare) use the real pool."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - the pool hands every failure to the caller
            future.set_exception(err)
        return future


@pytest.fixture
def inline_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from lagvae.experiments import compare

    monkeypatch.setattr(compare, "worker_pool", InlinePool)


@pytest.fixture
def lg_vae() -> tuple[VAE, LinearGaussianDecoder]:
    torch.manual_seed(0)
    return linear_gaussian_vae()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished TINY run per test module, trained once; each test that only needs a finished run works
    on a copy (`run`)."""
    from tests.test_run_folder import _train

    out = tmp_path_factory.mktemp("trained") / "run"
    assert _train(out) == 0
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the module's finished run."""
    return Path(shutil.copytree(trained, tmp_path / "run"))

"""Training objectives: noise, sigma sampling, noisy inputs, native targets and loss weights.

One strategy object per model family, so the training loop stays free of if-chains::

    noise  = make_noise(x0, gen, noise_offset)
    sigma  = objective.sample_sigmas(batch_size, gen, latent_hw=(h, w))   # (B,) float32, CPU
    x_t    = objective.noisy(x0, noise, sigma)
    D      = model(x_t, sigma, conds)          # ComfyUI apply_model: the denoised x0 estimate
    pred   = objective.prediction(D, x_t, sigma)
    target = objective.target(x0, noise, sigma)
    loss_b = per_sample_loss(pred, target) * objective.loss_weight(sigma, min_snr_gamma)

``x0`` is the latent *after* the model's ``process_latent_in``. All formulas follow ComfyUI's
``model_sampling`` parameterisations (``comfy/model_sampling.py``: EPS, V_PREDICTION, CONST) and sd-scripts'
sampling options (``library/train_util.py`` timestep sampling and noise offset, ``library/custom_train_functions.py``
``apply_snr_weight``, ``library/flux_train_utils.py`` ``get_noisy_model_input_and_timesteps``):

* :class:`DiscreteObjective` (EPS / V_PREDICTION; SD1.x, SD2.x, SDXL): integer timesteps
  ``t ~ randint(min_timestep, max_timestep)``, ``sigma = sigmas[t]`` on the model's exact DDPM grid,
  ``x_t = x0 + sigma * noise`` (ComfyUI's VE form).
* :class:`FlowObjective` (CONST / rectified flow; SD3, FLUX): ``sigma`` in (0, 1],
  ``x_t = sigma * noise + (1 - sigma) * x0``, target ``noise - x0``.

Randomness comes only from the ``torch.Generator`` passed in, which must be a CPU generator;
numbers are drawn on the CPU and then moved, so CPU and GPU runs see identical draws.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Protocol, Tuple, runtime_checkable

import torch

log = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "DiscreteObjective",
    "FlowObjective",
    "make_noise",
    "per_sample_loss",
    "LOSS_TYPES",
    "FLOW_SAMPLINGS",
    "DISCRETE_PREDICTIONS",
    "flux_shift_mu",
    "shift_sigmas",
    "flux_shift_sigmas",
    "ddpm_sigmas",
]

LOSS_TYPES: Tuple[str, ...] = ("l2", "l1", "huber", "smooth_l1")
FLOW_SAMPLINGS: Tuple[str, ...] = ("uniform", "sigmoid", "shift", "flux_shift", "flux2_shift")
DISCRETE_PREDICTIONS: Tuple[str, ...] = ("eps", "v")

#: Smallest flow sigma ever returned. ``prediction`` divides by sigma, and ``torch.rand`` can
#: return exactly 0.0. ComfyUI's own flow schedules never go below ~1e-3 either.
FLOW_SIGMA_MIN = 1e-4


def _check_generator(gen: torch.Generator) -> None:
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"expected a torch.Generator, got {type(gen).__name__}")
    if gen.device.type != "cpu":
        raise ValueError(
            f"the training generator must be a CPU torch.Generator (got device {gen.device}); "
            "noise is drawn on the CPU and moved so CPU and GPU runs match"
        )


def _view_b(sigma: torch.Tensor, like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Reshape a (B,) sigma to (B, 1, 1, ...) for broadcasting against ``like``."""
    if sigma.ndim != 1 or sigma.shape[0] != like.shape[0]:
        raise ValueError(
            f"sigma must have shape (B,) with B={like.shape[0]} to match the batch, got {tuple(sigma.shape)}"
        )
    return sigma.to(device=like.device, dtype=dtype or like.dtype).view(-1, *([1] * (like.ndim - 1)))


# --------------------------------------------------------------------------------------------
# noise and loss
# --------------------------------------------------------------------------------------------

def make_noise(x0: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise shaped like ``x0`` (kohya ``noise_offset`` supported).

    Drawn in float32 on the CPU from ``generator`` and then moved to ``x0``'s device and dtype.
    With ``noise_offset`` > 0: ``noise += noise_offset * randn(B, C, 1, 1)`` (sd-scripts), drawn
    after the main noise.
    """
    _check_generator(generator)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be at least (B, C, ...), got shape {tuple(x0.shape)}")
    noise = torch.randn(tuple(x0.shape), generator=generator, dtype=torch.float32, device="cpu")
    if noise_offset:
        off_shape = (x0.shape[0], x0.shape[1]) + (1,) * (x0.ndim - 2)
        noise = noise + float(noise_offset) * torch.randn(off_shape, generator=generator, dtype=torch.float32)
    return noise.to(device=x0.device, dtype=x0.dtype)


def per_sample_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", huber_c: float = 0.1
) -> torch.Tensor:
    """Element loss averaged over every non-batch dim -> (B,) float32.

    ``l2`` (mean squared error), ``l1``, ``huber`` = ``2c(sqrt(d^2+c^2)-c)`` and
    ``smooth_l1`` = ``2(sqrt(d^2+c^2)-c)`` with a constant ``huber_c`` (sd-scripts' formulas,
    constant huber schedule).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    d = pred.float() - target.float()
    if loss_type == "l2":
        el = d * d
    elif loss_type == "l1":
        el = d.abs()
    elif loss_type == "huber":
        c = float(huber_c)
        el = 2.0 * c * (torch.sqrt(d * d + c * c) - c)
    elif loss_type == "smooth_l1":
        c = float(huber_c)
        el = 2.0 * (torch.sqrt(d * d + c * c) - c)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if el.ndim == 1:
        return el
    return el.reshape(el.shape[0], -1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------

@runtime_checkable
class Objective(Protocol):
    """What the training loop needs from an objective."""

    kind: str

    def sample_sigmas(
        self, batch_size: int, generator: torch.Generator, latent_hw: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor: ...

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def prediction(self, denoised: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None) -> torch.Tensor: ...

    def metadata(self) -> dict: ...


# --------------------------------------------------------------------------------------------
# discrete (EPS / V)
# --------------------------------------------------------------------------------------------

def ddpm_sigmas(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The SD "scaled_linear" DDPM schedule as k-diffusion sigmas ``sqrt((1-abar)/abar)``.

    Same construction as ComfyUI's ``ModelSamplingDiscrete`` default; handy for tests and for
    callers without a model. Prefer the model's own ``model_sampling.sigmas``.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - abar) / abar).sqrt().to(dtype)


class DiscreteObjective:
    """EPS or V objective on a discrete 1000-step sigma table (SD1.x, SD2.x, SDXL).

    Args:
        sigmas: the model's ``model_sampling.sigmas`` (increasing, one per timestep).
        prediction: ``"eps"`` (SD1.x, SDXL) or ``"v"`` (SD2-768, v-pred SDXL).
        min_timestep, max_timestep: sd-scripts semantics, ``t ~ randint(min, max)`` (upper bound
            exclusive); if ``min == max`` every t equals ``max`` (which must then be a valid index).
    """

    kind = "discrete"

    def __init__(
        self,
        sigmas: torch.Tensor,
        prediction: str = "eps",
        min_timestep: int = 0,
        max_timestep: Optional[int] = None,
    ) -> None:
        sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float32).flatten()
        if sigmas.numel() < 2:
            raise ValueError("sigmas must hold the model's full discrete schedule (e.g. 1000 values)")
        if not torch.all(sigmas > 0) or not torch.all(torch.isfinite(sigmas)):
            raise ValueError(
                "sigmas must be finite and > 0; a zero-terminal-SNR schedule (infinite last sigma) is "
                "not supported by the discrete objective"
            )
        if prediction not in DISCRETE_PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose 'eps' or 'v'")
        n = sigmas.numel()
        if max_timestep is None:
            max_timestep = n
        min_timestep, max_timestep = int(min_timestep), int(max_timestep)
        if not (0 <= min_timestep <= max_timestep <= n):
            raise ValueError(
                f"need 0 <= min_timestep ({min_timestep}) <= max_timestep ({max_timestep}) <= {n}"
            )
        if min_timestep == max_timestep and max_timestep >= n:
            raise ValueError(
                f"min_timestep == max_timestep == {max_timestep} selects no valid timestep; "
                f"use a value below {n}"
            )
        self.sigmas = sigmas
        self.prediction_type = prediction
        self.min_timestep = min_timestep
        self.max_timestep = max_timestep
        #: timesteps of the last :meth:`sample_sigmas` call (int64, CPU), for logging.
        self.last_timesteps: Optional[torch.Tensor] = None

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.numel()

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) int64 timesteps, sd-scripts ``get_timesteps`` semantics."""
        _check_generator(generator)
        if self.min_timestep < self.max_timestep:
            return torch.randint(self.min_timestep, self.max_timestep, (batch_size,), generator=generator)
        return torch.full((batch_size,), self.max_timestep, dtype=torch.int64)

    def sigmas_for(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.sigmas[torch.as_tensor(timesteps, dtype=torch.long).cpu()]

    def timesteps_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest timestep index for each sigma (log-sigma distance, like ComfyUI)."""
        d = sigma.detach().float().cpu().log().view(-1, 1) - self.sigmas.log().view(1, -1)
        return d.abs().argmin(dim=1)

    def sample_sigmas(
        self, batch_size: int, generator: torch.Generator, latent_hw: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor:
        t = self.sample_timesteps(batch_size, generator)
        self.last_timesteps = t
        return self.sigmas_for(t)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0 + _view_b(sigma, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "eps":
            return noise.float()
        s = _view_b(sigma, x0, torch.float32)
        return (noise.float() - s * x0.float()) / torch.sqrt(1.0 + s * s)

    def prediction(self, denoised: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _view_b(sigma, x_t, torch.float32)
        d, x = denoised.float(), x_t.float()
        if self.prediction_type == "eps":
            return (x - d) / s
        one_s2 = 1.0 + s * s
        return (x / one_s2 - d) * torch.sqrt(one_s2) / s

    def snr(self, sigma: torch.Tensor) -> torch.Tensor:
        """SNR = abar / (1 - abar) = 1 / sigma^2 (float32)."""
        s = sigma.detach().double().cpu()
        return (1.0 / (s * s)).float()

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None) -> torch.Tensor:
        """Per-sample weight (B,) float32 on sigma's device; ones unless ``min_snr_gamma`` > 0.

        min-SNR-gamma (sd-scripts ``apply_snr_weight``): eps ``min(snr, g) / snr``,
        v ``min(snr, g) / (snr + 1)``.
        """
        if not min_snr_gamma:
            return torch.ones(sigma.shape[0], dtype=torch.float32, device=sigma.device)
        s = sigma.detach().double()
        snr = 1.0 / (s * s)
        clipped = torch.clamp(snr, max=float(min_snr_gamma))
        w = clipped / snr if self.prediction_type == "eps" else clipped / (snr + 1.0)
        return w.float()

    def metadata(self) -> dict:
        return {
            "objective": "discrete",
            "prediction_type": self.prediction_type,
            "min_timestep": self.min_timestep,
            "max_timestep": self.max_timestep,
        }

    def __repr__(self) -> str:
        return (f"DiscreteObjective(prediction={self.prediction_type!r}, "
                f"min_timestep={self.min_timestep}, max_timestep={self.max_timestep})")


# --------------------------------------------------------------------------------------------
# flow (CONST)
# --------------------------------------------------------------------------------------------

def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """sd-scripts ``shift`` mode / SD3 shift: ``k*s / (1 + (k-1)*s)``."""
    return sigma * shift / (1.0 + (shift - 1.0) * sigma)


def flux_shift_mu(latent_h: int, latent_w: int, patch: int = 2) -> float:
    """mu for FLUX resolution-dependent shift: linear in the image token count seq = (h//patch)*(w//patch),
    through (256, 0.5) and (4096, 1.15); h, w are latent (not pixel) sizes. FLUX.1 packs 2x2 latent patches
    (sd-scripts ``flux_shift``); FLUX.2's 128-channel latents are one token each (musubi-tuner ``flux2_shift``)."""
    seq = (int(latent_h) // patch) * (int(latent_w) // patch)
    m = (1.15 - 0.5) / (4096 - 256)
    b = 0.5 - m * 256
    return m * seq + b


def flux_shift_sigmas(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """``e^mu / (e^mu + 1/sigma - 1)`` (sd-scripts ``time_shift(mu, 1.0, t)``)."""
    em = math.exp(mu)
    return em / (em + (1.0 / sigma - 1.0))


class FlowObjective:
    """Rectified-flow objective (ComfyUI CONST; SD3/3.5, FLUX.1).

    ``sampling`` (sd-scripts ``--timestep_sampling``), N ~ standard normal:

    * ``uniform``: sigma ~ U(0, 1)
    * ``sigmoid``: sigma = sigmoid(sigmoid_scale * N + logit_mean)
    * ``shift``: sigmoid as above, then ``k*s/(1+(k-1)*s)`` with k = ``discrete_flow_shift``
    * ``flux_shift``: sigmoid as above, then ``e^mu/(e^mu + 1/s - 1)`` with mu from the latent
      size (:func:`flux_shift_mu`); needs ``latent_hw``.
    * ``flux2_shift``: the same with one token per latent pixel (FLUX.2, musubi-tuner).

    ``logit_mean`` defaults to 0, which is exactly sd-scripts. Sigmas are clamped to at least
    :data:`FLOW_SIGMA_MIN` (the prediction divides by sigma). min-SNR-gamma does not apply to flow
    models (sd-scripts ignores it for FLUX/SD3 too): :meth:`loss_weight` returns ones and logs a
    warning once if a gamma is given.
    """

    kind = "flow"

    def __init__(
        self,
        sampling: str = "sigmoid",
        sigmoid_scale: float = 1.0,
        logit_mean: float = 0.0,
        discrete_flow_shift: float = 3.0,
    ) -> None:
        if sampling not in FLOW_SAMPLINGS:
            raise ValueError(f"unknown flow timestep sampling {sampling!r}; choose one of {', '.join(FLOW_SAMPLINGS)}")
        if sampling == "shift" and not discrete_flow_shift > 0:
            raise ValueError(f"discrete_flow_shift must be > 0, got {discrete_flow_shift}")
        self.sampling = sampling
        self.sigmoid_scale = float(sigmoid_scale)
        self.logit_mean = float(logit_mean)
        self.discrete_flow_shift = float(discrete_flow_shift)
        self._warned_min_snr = False

    def sample_sigmas(
        self, batch_size: int, generator: torch.Generator, latent_hw: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor:
        _check_generator(generator)
        if self.sampling == "uniform":
            s = torch.rand((batch_size,), generator=generator, dtype=torch.float32)
        else:
            n = torch.randn((batch_size,), generator=generator, dtype=torch.float32)
            s = torch.sigmoid(n * self.sigmoid_scale + self.logit_mean)
            if self.sampling == "shift":
                s = shift_sigmas(s, self.discrete_flow_shift)
            elif self.sampling in ("flux_shift", "flux2_shift"):
                if latent_hw is None:
                    raise ValueError(f"{self.sampling} timestep sampling needs latent_hw=(latent_height, latent_width)")
                patch = 2 if self.sampling == "flux_shift" else 1
                s = flux_shift_sigmas(s, flux_shift_mu(*latent_hw, patch=patch))
        return s.clamp(min=FLOW_SIGMA_MIN, max=1.0).to(torch.float32)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _view_b(sigma, x0)
        return s * noise + (1.0 - s) * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return noise.float() - x0.float()

    def prediction(self, denoised: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _view_b(sigma, x_t, torch.float32)
        return (x_t.float() - denoised.float()) / s

    def timesteps_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma * 1000 (sd-scripts' timestep convention), for logging."""
        return sigma.detach().float().cpu() * 1000.0

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None) -> torch.Tensor:
        if min_snr_gamma and not self._warned_min_snr:
            log.warning("min_snr_gamma=%s is ignored for flow-matching models (SD3/FLUX), as in sd-scripts",
                        min_snr_gamma)
            self._warned_min_snr = True
        return torch.ones(sigma.shape[0], dtype=torch.float32, device=sigma.device)

    def metadata(self) -> dict:
        return {
            "objective": "flow",
            "timestep_sampling": self.sampling,
            "sigmoid_scale": self.sigmoid_scale,
            "logit_mean": self.logit_mean,
            "discrete_flow_shift": self.discrete_flow_shift,
        }

    def __repr__(self) -> str:
        return (f"FlowObjective(sampling={self.sampling!r}, sigmoid_scale={self.sigmoid_scale}, "
                f"logit_mean={self.logit_mean}, discrete_flow_shift={self.discrete_flow_shift})")

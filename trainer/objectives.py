"""Training objectives: noise, sigma sampling, noisy inputs, native targets and loss weights.

One strategy object per model family, so the training loop stays free of if-chains::

    noise  = make_noise(x0, gen, noise_offset)    # or trainer/noise.py StepNoise: all sd-scripts noise options
    sigma  = objective.sample_sigmas(batch_size, gen, latent_hw=(h, w))   # (B,) float32, CPU
    x_t    = objective.noisy(x0, noise, sigma)
    D      = model(x_t, sigma, conds)          # ComfyUI apply_model: the denoised x0 estimate
    pred   = objective.prediction(D, x_t, sigma)
    target = objective.target(x0, noise, sigma)
    c      = objective.huber_threshold(sigma, huber_schedule, huber_c, huber_scale)  # huber / smooth_l1 only
    loss_b = per_sample_loss(pred, target, loss_type, c) * objective.loss_weight(sigma, min_snr_gamma, ...)

``x0`` is the latent *after* the model's ``process_latent_in``. All formulas follow ComfyUI's
``model_sampling`` parameterisations (``comfy/model_sampling.py``: EPS, V_PREDICTION, CONST) and sd-scripts'
sampling options (``library/train_util.py`` timestep sampling, noise offset, ``get_huber_threshold_if_needed`` and
``conditional_loss``, ``library/custom_train_functions.py`` ``apply_snr_weight`` and the other loss weights,
``fix_noise_scheduler_betas_for_zero_terminal_snr``, ``library/flux_train_utils.py``
``get_noisy_model_input_and_timesteps``):

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
from typing import Optional, Protocol, Tuple, Union, runtime_checkable

import torch

log = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "DiscreteObjective",
    "FlowObjective",
    "make_noise",
    "per_sample_loss",
    "huber_threshold",
    "check_weighting",
    "zero_terminal_snr_sigmas",
    "LOSS_TYPES",
    "HUBER_SCHEDULES",
    "FLOW_SAMPLINGS",
    "DISCRETE_PREDICTIONS",
    "flux_shift_mu",
    "shift_sigmas",
    "flux_shift_sigmas",
    "ddpm_sigmas",
]

LOSS_TYPES: Tuple[str, ...] = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES: Tuple[str, ...] = ("constant", "exponential", "snr")
#: TrainConfig fields (kohya names) of the huber threshold and of the loss weights (``loss_weight``'s keywords)
HUBER_OPTIONS: Tuple[str, ...] = ("huber_schedule", "huber_c", "huber_scale")
WEIGHTING_OPTIONS: Tuple[str, ...] = ("min_snr_gamma", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
                                      "debiased_estimation_loss")
#: sd-scripts caps the SNR at 1000 for its v-pred-like, scale-v and debiased weights (t = 0 has SNR ~1175 on SD)
SNR_CAP = 1000.0
#: the last alpha-cumprod of a zero-terminal-SNR schedule (exactly 0 there) as ComfyUI's ModelSamplingDiscrete
#: (zsnr=True) sets it, so the last sigma is finite (~4518.8)
ZSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08
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
    pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
    huber_c: Union[float, torch.Tensor, None] = 0.1, mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Element loss averaged over every non-batch dim -> (B,) float32.

    ``l2`` (mean squared error), ``l1``, ``huber`` = ``2c(sqrt(d^2+c^2)-c)`` and
    ``smooth_l1`` = ``2(sqrt(d^2+c^2)-c)`` (sd-scripts ``conditional_loss``); ``huber_c`` is one
    number or one per sample (B,), as :meth:`DiscreteObjective.huber_threshold` schedules it.
    ``mask`` (B, 1, ..., h, w) in [0, 1] (masked loss): each element's loss times its pixel's mask, averaged over the
    mask's area, ``sum(loss * mask) / (C * sum(mask))`` (sd-scripts averages over the whole latent instead, so a
    small mask also trains with a smaller loss there); a sample whose mask is 0 everywhere gives 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    d = pred.float() - target.float()
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs huber_c")
        c = _view_b(huber_c, d, torch.float32) if isinstance(huber_c, torch.Tensor) else float(huber_c)
    if loss_type == "l2":
        el = d * d
    elif loss_type == "l1":
        el = d.abs()
    elif loss_type == "huber":
        el = 2.0 * c * (torch.sqrt(d * d + c * c) - c)
    elif loss_type == "smooth_l1":
        el = 2.0 * (torch.sqrt(d * d + c * c) - c)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if el.ndim == 1:
        return el
    if mask is not None:
        mask = mask.to(el.dtype)
        area = mask.expand_as(el).reshape(el.shape[0], -1).sum(dim=1)
        return (el * mask).reshape(el.shape[0], -1).sum(dim=1) / area.clamp_min(1e-12)
    return el.reshape(el.shape[0], -1).mean(dim=1)


def huber_threshold(
    schedule: str, huber_c: float, huber_scale: float, timesteps: torch.Tensor, ve_sigma: torch.Tensor,
    num_timesteps: int = 1000,
) -> torch.Tensor:
    """sd-scripts ``get_huber_threshold_if_needed``: the huber/smooth_l1 ``c`` of each sample (B,) float64.

    * ``constant``: ``huber_c * huber_scale``
    * ``exponential``: ``exp(-a * t) * huber_scale`` with ``a = -ln(huber_c) / num_timesteps``: ``huber_scale``
      at t = 0, ``huber_c * huber_scale`` at t = num_timesteps
    * ``snr``: ``(1 - huber_c) / (1 + sigma)^2 + huber_c`` with ``sigma = sqrt((1 - abar) / abar)``: 1 at
      sigma 0, ``huber_c`` at infinite sigma; ``huber_scale`` is not used (as in sd-scripts)
    """
    t = torch.as_tensor(timesteps).detach().double().cpu()
    if schedule == "constant":
        return torch.full(t.shape, float(huber_c) * float(huber_scale), dtype=torch.float64)
    if schedule == "exponential":
        alpha = -math.log(float(huber_c)) / int(num_timesteps)
        return torch.exp(-alpha * t) * float(huber_scale)
    if schedule == "snr":
        s = torch.as_tensor(ve_sigma).detach().double().cpu()
        return (1.0 - float(huber_c)) / (1.0 + s) ** 2 + float(huber_c)
    raise ValueError(f"unknown huber_schedule {schedule!r}; choose one of {', '.join(HUBER_SCHEDULES)}")


def check_weighting(prediction: str, scale_v_pred_loss_like_noise_pred: bool = False,
                    v_pred_like_loss: float = 0.0, **_: object) -> None:
    """sd-scripts' rules (``verify_training_args``): ``scale_v_pred_loss_like_noise_pred`` only for v-prediction,
    ``v_pred_like_loss`` never for v-prediction. ``prediction``: the model's own (eps / v / flow)."""
    if scale_v_pred_loss_like_noise_pred and prediction != "v":
        raise ValueError(f"scale_v_pred_loss_like_noise_pred needs a v-prediction model (this one is {prediction}); "
                         "sd-scripts allows it only with v_parameterization")
    if v_pred_like_loss and prediction == "v":
        raise ValueError("v_pred_like_loss cannot be used with a v-prediction model (sd-scripts' rule); it adds a "
                         "v-prediction-like loss to an eps model")


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

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None, *,
                    scale_v_pred_loss_like_noise_pred: bool = False, v_pred_like_loss: float = 0.0,
                    debiased_estimation_loss: bool = False) -> torch.Tensor: ...

    def huber_threshold(self, sigma: torch.Tensor, huber_schedule: str = "snr", huber_c: float = 0.1,
                        huber_scale: float = 1.0) -> torch.Tensor: ...

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


def zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """sd-scripts ``fix_noise_scheduler_betas_for_zero_terminal_snr`` (arXiv 2305.08891) on a sigma table:
    ``sqrt(abar)`` shifted so the last one is 0 and scaled so the first one is unchanged. That last
    ``abar`` (exactly 0: an infinite sigma, pure noise) becomes :data:`ZSNR_LAST_ALPHA_CUMPROD` as in
    ComfyUI's ``ModelSamplingDiscrete(zsnr=True)``, so the table is the one ComfyUI samples a zsnr model
    with. Computed in float64 (sd-scripts goes through the betas in float32: the same numbers up to rounding),
    returned as float32."""
    s = torch.as_tensor(sigmas).detach().double().cpu().flatten()
    root = (1.0 / (s * s + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root * root
    abar[-1] = ZSNR_LAST_ALPHA_CUMPROD
    return ((1.0 - abar) / abar).sqrt().float()


class DiscreteObjective:
    """EPS or V objective on a discrete 1000-step sigma table (SD1.x, SD2.x, SDXL).

    Args:
        sigmas: the model's ``model_sampling.sigmas`` (increasing, one per timestep).
        prediction: ``"eps"`` (SD1.x, SDXL) or ``"v"`` (SD2-768, v-pred SDXL).
        min_timestep, max_timestep: sd-scripts semantics, ``t ~ randint(min, max)`` (upper bound
            exclusive); if ``min == max`` every t equals ``max`` (which must then be a valid index).
        zero_terminal_snr: train on :func:`zero_terminal_snr_sigmas` of ``sigmas`` (kohya
            zero_terminal_snr). The loss weights keep the SNR of ``sigmas`` as sd-scripts' do (its
            ``all_snr`` is computed before the betas are rescaled). A table that already ends at
            zero terminal SNR (ComfyUI's zsnr: last sigma > 1000) is used as it is.
    """

    kind = "discrete"

    def __init__(
        self,
        sigmas: torch.Tensor,
        prediction: str = "eps",
        min_timestep: int = 0,
        max_timestep: Optional[int] = None,
        zero_terminal_snr: bool = False,
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
        #: the table the loss weights' SNR comes from when it is not ``sigmas`` (zero_terminal_snr)
        self.snr_sigmas: Optional[torch.Tensor] = None
        if zero_terminal_snr:
            if prediction != "v":
                log.warning("zero_terminal_snr on an eps model: sd-scripts warns that training will be unexpected "
                            "(it is meant for v-prediction)")
            if sigmas[-1] > 1000.0:
                log.info("zero_terminal_snr: the model's schedule already ends at zero terminal SNR (last sigma "
                         "%.1f); used as it is", float(sigmas[-1]))
            else:
                self.snr_sigmas = sigmas
                sigmas = zero_terminal_snr_sigmas(sigmas)
        self.zero_terminal_snr = bool(zero_terminal_snr)
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

    def _weight_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        """The SNR the loss weights use (float64, on sigma's device): 1 / sigma^2, or with zero_terminal_snr
        that of the same timestep on the schedule before the rescale (sd-scripts' ``all_snr``)."""
        s = sigma.detach().double()
        if self.snr_sigmas is not None:
            s = self.snr_sigmas[self.timesteps_for(sigma)].double().to(sigma.device)
        return 1.0 / (s * s)

    def huber_threshold(self, sigma: torch.Tensor, huber_schedule: str = "snr", huber_c: float = 0.1,
                        huber_scale: float = 1.0) -> torch.Tensor:
        """The huber/smooth_l1 ``c`` per sample (B,) float32 on sigma's device (:func:`huber_threshold` with
        the integer timestep of each sigma and the sigma itself)."""
        t = self.timesteps_for(sigma)
        c = huber_threshold(huber_schedule, huber_c, huber_scale, t, sigma, self.num_timesteps)
        return c.float().to(sigma.device)

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None, *,
                    scale_v_pred_loss_like_noise_pred: bool = False, v_pred_like_loss: float = 0.0,
                    debiased_estimation_loss: bool = False) -> torch.Tensor:
        """Per-sample weight (B,) float32 on sigma's device; ones when every option is off.

        sd-scripts' ``post_process_loss``, in its order (``s`` = SNR, ``s'`` = min(SNR, 1000)):

        * ``min_snr_gamma`` (``apply_snr_weight``): eps ``min(s, g) / s``, v ``min(s, g) / (s + 1)``
        * ``scale_v_pred_loss_like_noise_pred`` (v only): ``s' / (s' + 1)``
        * ``v_pred_like_loss`` k (eps only; the loss becomes ``loss + loss / scale * k``): ``1 + k (s' + 1) / s'``
        * ``debiased_estimation_loss``: eps ``1 / sqrt(s')``, v ``1 / (s' + 1)``
        """
        check_weighting(self.prediction_type, scale_v_pred_loss_like_noise_pred, v_pred_like_loss)
        ones = torch.ones(sigma.shape[0], dtype=torch.float32, device=sigma.device)
        if not (min_snr_gamma or scale_v_pred_loss_like_noise_pred or v_pred_like_loss or debiased_estimation_loss):
            return ones
        eps = self.prediction_type == "eps"
        snr = self._weight_snr(sigma)
        capped = torch.clamp(snr, max=SNR_CAP)
        w = ones.double()
        if min_snr_gamma:
            clipped = torch.clamp(snr, max=float(min_snr_gamma))
            w = w * (clipped / snr if eps else clipped / (snr + 1.0))
        if scale_v_pred_loss_like_noise_pred:
            w = w * (capped / (capped + 1.0))
        if v_pred_like_loss:
            w = w * (1.0 + float(v_pred_like_loss) / (capped / (capped + 1.0)))
        if debiased_estimation_loss:
            w = w * (1.0 / torch.sqrt(capped) if eps else 1.0 / (capped + 1.0))
        return w.float()

    def metadata(self) -> dict:
        return {
            "objective": "discrete",
            "prediction_type": self.prediction_type,
            "min_timestep": self.min_timestep,
            "max_timestep": self.max_timestep,
            "zero_terminal_snr": self.zero_terminal_snr,
        }

    def __repr__(self) -> str:
        return (f"DiscreteObjective(prediction={self.prediction_type!r}, "
                f"min_timestep={self.min_timestep}, max_timestep={self.max_timestep}"
                f"{', zero_terminal_snr=True' if self.zero_terminal_snr else ''})")


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
    :data:`FLOW_SIGMA_MIN` (the prediction divides by sigma). The SNR loss weights (min-SNR-gamma,
    debiased, v-pred-like) do not apply to flow models (sd-scripts' flow trainers skip them too):
    :meth:`loss_weight` returns ones and logs a warning once if one is given.
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

    def huber_threshold(self, sigma: torch.Tensor, huber_schedule: str = "snr", huber_c: float = 0.1,
                        huber_scale: float = 1.0) -> torch.Tensor:
        """The huber/smooth_l1 ``c`` per sample (B,) float32 on sigma's device, with sd-scripts' flow timestep
        ``t = 1000 * sigma``. ``snr``: sd-scripts refuses it for flow models (its flow scheduler has no
        alphas_cumprod); here it uses the flow SNR ``((1 - sigma) / sigma)^2``, i.e. ``sigma / (1 - sigma)`` in
        place of the discrete sigma: ``(1 - c) (1 - sigma)^2 + c``, 1 at sigma 0 and c at sigma 1."""
        s = sigma.detach().double().cpu()
        c = huber_threshold(huber_schedule, huber_c, huber_scale, s * 1000.0, s / (1.0 - s), 1000)
        return c.float().to(sigma.device)

    def loss_weight(self, sigma: torch.Tensor, min_snr_gamma: Optional[float] = None, *,
                    scale_v_pred_loss_like_noise_pred: bool = False, v_pred_like_loss: float = 0.0,
                    debiased_estimation_loss: bool = False) -> torch.Tensor:
        """Ones: sd-scripts' flow trainers apply none of the SNR weights (a warning says so once);
        ``scale_v_pred_loss_like_noise_pred`` is an error, as sd-scripts refuses it without v-prediction."""
        check_weighting("flow", scale_v_pred_loss_like_noise_pred, v_pred_like_loss)
        given = {"min_snr_gamma": min_snr_gamma, "v_pred_like_loss": v_pred_like_loss,
                 "debiased_estimation_loss": debiased_estimation_loss}
        given = {k: v for k, v in given.items() if v}
        if given and not self._warned_min_snr:
            log.warning("%s ignored for flow-matching models (SD3, FLUX and the newer families), as in sd-scripts",
                        ", ".join(f"{k}={v}" for k, v in given.items()))
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

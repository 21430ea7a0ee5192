"""The noise of a training step, with sd-scripts' noise options (``library/train_util.py``
``get_noise_noisy_latents_and_timesteps``, ``library/custom_train_functions.py`` ``apply_noise_offset`` and
``pyramid_noise_like``, ``library/flux_train_utils.py`` ``get_noisy_model_input_and_timesteps``)::

    noise  = step_noise.noise(x0, gen)          # Gaussian (+ offset noise, adaptive offset, pyramid noise)
    sigma  = objective.sample_sigmas(...)
    x_t    = objective.noisy(x0, step_noise.input_noise(noise, gen), sigma)   # + input perturbation noise
    target = objective.target(x0, noise, sigma)                               # the unperturbed noise

In sd-scripts' order: offset noise (a random strength first, when asked), then pyramid noise on top of it; the
timesteps; then the input perturbation (``ip_noise_gamma``), which only the noisy input sees, never the target.
sd-scripts' flow-model trainers (FLUX.1, SD3, Lumina, HunyuanImage, Anima) draw plain Gaussian noise: offset,
adaptive and pyramid noise do not apply to flow models here either (a warning says so once). Input perturbation
applies to every model (sd-scripts' SD3 trainer alone ignores it).

Every number comes from the step's CPU generator, in the order above, drawn for the whole (global) batch, so runs
are bit-reproducible and several processes draw what one process draws. Where sd-scripts uses Python's global
``random`` (the pyramid's resolution ratios) the generator is used instead."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Union

import torch

from .objectives import _check_generator

log = logging.getLogger(__name__)

__all__ = ["StepNoise", "NOISE_OPTIONS", "apply_noise_offset", "pyramid_noise_like"]

#: TrainConfig fields (kohya names) that shape the noise
NOISE_OPTIONS = ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
                 "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength")
#: the ones sd-scripts' flow-model trainers do not apply
_NOT_FOR_FLOW = ("noise_offset", "adaptive_noise_scale", "multires_noise_iterations")


def apply_noise_offset(x0: torch.Tensor, noise: torch.Tensor, noise_offset: Union[float, torch.Tensor],
                       adaptive_noise_scale: float, generator: torch.Generator) -> torch.Tensor:
    """sd-scripts ``apply_noise_offset``: ``noise + offset * randn(B, C, 1, 1)``; with ``adaptive_noise_scale``
    the offset becomes ``max(0, offset + adaptive_noise_scale * |mean of x0 over its spatial dims|)`` per sample and
    channel. CPU float32 tensors; ``x0`` is the latent the model sees (after ``process_latent_in``)."""
    if adaptive_noise_scale:
        latent_mean = x0.mean(dim=tuple(range(2, x0.ndim)), keepdim=True).abs()
        noise_offset = torch.clamp(noise_offset + adaptive_noise_scale * latent_mean, 0.0, None)
    shape = (x0.shape[0], x0.shape[1]) + (1,) * (x0.ndim - 2)
    return noise + noise_offset * torch.randn(shape, generator=generator, dtype=torch.float32)


def pyramid_noise_like(noise: torch.Tensor, generator: torch.Generator, iterations: int = 6,
                       discount: float = 0.4) -> torch.Tensor:
    """sd-scripts ``pyramid_noise_like`` (multi-resolution noise) on a (B, C, H, W) CPU float32 tensor: for
    i = 0 .. iterations-1, r = 2 + 2u (u uniform, from ``generator``), add ``randn(B, C, H / r^i, W / r^i)``
    bilinearly upsampled times ``discount^i``, stopping after a 1-pixel level; then divide by the std of the whole
    tensor (of the whole batch, as sd-scripts does). Level 0 is a second full-resolution noise."""
    if noise.ndim != 4:
        raise ValueError(f"pyramid (multires) noise needs (B, C, H, W) latents, got shape {tuple(noise.shape)}")
    b, c, h, w = noise.shape
    up = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for i in range(iterations):
        r = torch.rand((), generator=generator, dtype=torch.float64).item() * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        noise = noise + up(torch.randn((b, c, hn, wn), generator=generator, dtype=torch.float32)) * discount ** i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


@dataclass(frozen=True)
class StepNoise:
    """The noise options of a run (kohya names; 0 / False = off, sd-scripts' None)."""

    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    ip_noise_gamma_random_strength: bool = False

    @classmethod
    def of(cls, cfg, objective_kind: str = "discrete") -> "StepNoise":
        """From a TrainConfig; a flow objective drops the options sd-scripts' flow trainers do not apply."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        if objective_kind == "flow":
            dropped = [f"{k}={values[k]}" for k in _NOT_FOR_FLOW if values[k]]
            if dropped:
                log.warning("%s ignored: flow-matching models (SD3, FLUX and the newer families) train on plain "
                            "Gaussian noise, as in sd-scripts", ", ".join(dropped))
            for k in _NOT_FOR_FLOW:
                values[k] = type(values[k])(0)
        return cls(**values)

    def noise(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise shaped like ``x0`` (the whole batch): Gaussian, + offset noise, + pyramid noise, in sd-scripts'
        order. Drawn in float32 on the CPU, returned on ``x0``'s device and dtype."""
        _check_generator(generator)
        if x0.ndim < 2:
            raise ValueError(f"x0 must be at least (B, C, ...), got shape {tuple(x0.shape)}")
        noise = torch.randn(tuple(x0.shape), generator=generator, dtype=torch.float32, device="cpu")
        if self.noise_offset:
            offset: Union[float, torch.Tensor] = float(self.noise_offset)
            if self.noise_offset_random_strength:
                offset = torch.rand(1, generator=generator, dtype=torch.float32) * offset
            x0_cpu = x0.detach().to("cpu", torch.float32) if self.adaptive_noise_scale else x0
            noise = apply_noise_offset(x0_cpu, noise, offset, float(self.adaptive_noise_scale), generator)
        if self.multires_noise_iterations:
            noise = pyramid_noise_like(noise, generator, int(self.multires_noise_iterations),
                                       float(self.multires_noise_discount))
        return noise.to(device=x0.device, dtype=x0.dtype)

    def input_noise(self, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise the noisy input is made with: ``noise + gamma * randn_like(noise)`` with ``ip_noise_gamma``
        (a strength ``U(0, 1) * gamma`` per batch with ``ip_noise_gamma_random_strength``), else ``noise``."""
        if not self.ip_noise_gamma:
            return noise
        _check_generator(generator)
        strength: Union[float, torch.Tensor] = float(self.ip_noise_gamma)
        if self.ip_noise_gamma_random_strength:
            strength = torch.rand(1, generator=generator, dtype=torch.float32) * strength
        xi = torch.randn(tuple(noise.shape), generator=generator, dtype=torch.float32)
        return noise + (strength * xi).to(device=noise.device, dtype=noise.dtype)

"""Tests for trainer.objectives (plain torch)."""
import logging
import math

import pytest
import torch

from trainer.objectives import (
    DiscreteObjective,
    FlowObjective,
    ddpm_sigmas,
    flux_shift_mu,
    flux_shift_sigmas,
    make_noise,
    per_sample_loss,
    shift_sigmas,
)


def sd_sigmas() -> torch.Tensor:
    """SD DDPM schedule built independently here: scaled_linear betas 0.00085..0.012, 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, 0)
    return torch.sqrt((1 - abar) / abar).float()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# sd-scripts library/custom_train_functions.py apply_snr_weight: t, snr, min-SNR gamma=5 (eps), gamma=5 (v)
KOHYA_TABLE = [
    (0, 1175.47, 0.004254, 0.00425),
    (100, 8.4539, 0.59144, 0.52888),
    (250, 2.0655, 1.0, 0.67379),
    (500, 0.38185, 1.0, 0.27633),
    (999, 0.004682, 1.0, 0.004660),
]


def test_ddpm_helper_matches_independent_schedule():
    assert torch.allclose(ddpm_sigmas(), sd_sigmas(), rtol=1e-6)


@pytest.mark.parametrize("t,snr,w_eps,w_v", KOHYA_TABLE)
def test_min_snr_table(t, snr, w_eps, w_v):
    sig = sd_sigmas()
    s = sig[[t]]
    eps = DiscreteObjective(sig, "eps")
    v = DiscreteObjective(sig, "v")
    assert eps.snr(s).item() == pytest.approx(snr, rel=2e-4)
    assert eps.loss_weight(s, 5.0).item() == pytest.approx(w_eps, rel=5e-4, abs=1e-6)
    assert v.loss_weight(s, 5.0).item() == pytest.approx(w_v, rel=5e-4, abs=1e-6)
    # no gamma -> plain ones
    assert eps.loss_weight(s, None).item() == 1.0
    assert v.loss_weight(s, 0).item() == 1.0


def _x0_noise(shape=(3, 4, 8, 8), seed=1):
    g = gen(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("pred_type", ["eps", "v"])
def test_discrete_round_trip_exact_denoised(pred_type):
    sig = sd_sigmas()
    obj = DiscreteObjective(sig, pred_type)
    x0, noise = _x0_noise()
    sigma = sig[torch.tensor([0, 500, 999])]
    x_t = obj.noisy(x0, noise, sigma)
    assert torch.allclose(x_t, x0 + sigma.view(-1, 1, 1, 1) * noise)
    pred = obj.prediction(x0, x_t, sigma)  # perfect model: D == x0
    tgt = obj.target(x0, noise, sigma)
    assert pred.dtype == torch.float32
    # small sigma at t=0 amplifies fp32 rounding of x_t by 1/sigma (~34x); measured max ~1e-5
    assert torch.allclose(pred, tgt, atol=5e-5, rtol=0)
    if pred_type == "eps":
        assert torch.equal(tgt, noise)


def test_v_prediction_inverts_comfy_calculate_denoised():
    # ComfyUI V_PREDICTION.calculate_denoised (sigma_data = 1):
    #   D = x * 1/(s^2+1) - out * s / sqrt(s^2+1)
    sig = sd_sigmas()
    obj = DiscreteObjective(sig, "v")
    g = gen(3)
    x = torch.randn(4, 4, 6, 6, generator=g)
    out = torch.randn(4, 4, 6, 6, generator=g)
    s = sig[torch.tensor([10, 200, 600, 950])].view(-1, 1, 1, 1)
    denoised = x / (s ** 2 + 1) - out * s / torch.sqrt(s ** 2 + 1)
    rec = obj.prediction(denoised, x, s.flatten())
    assert torch.allclose(rec, out, atol=1e-4, rtol=1e-4)
    # and v target is sqrt(abar)*eps - sqrt(1-abar)*x0
    x0, noise = _x0_noise((4, 4, 6, 6), 4)
    abar = 1.0 / (1.0 + s ** 2)
    expect = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(obj.target(x0, noise, s.flatten()), expect, atol=1e-5)


def test_eps_prediction_inverts_comfy_eps():
    sig = sd_sigmas()
    obj = DiscreteObjective(sig, "eps")
    g = gen(5)
    x = torch.randn(2, 4, 5, 5, generator=g)
    out = torch.randn(2, 4, 5, 5, generator=g)
    s = sig[torch.tensor([3, 700])]
    denoised = x - out * s.view(-1, 1, 1, 1)
    assert torch.allclose(obj.prediction(denoised, x, s), out, atol=1e-4)


@pytest.mark.parametrize("sampling", ["uniform", "sigmoid", "shift", "flux_shift"])
def test_flow_round_trip_and_range(sampling):
    obj = FlowObjective(sampling)
    x0, noise = _x0_noise((16, 16, 8, 8), 7)
    sigma = obj.sample_sigmas(16, gen(2), latent_hw=(8, 8))
    assert sigma.shape == (16,) and sigma.dtype == torch.float32 and sigma.device.type == "cpu"
    assert torch.all(sigma > 0) and torch.all(sigma <= 1)
    x_t = obj.noisy(x0, noise, sigma)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(x_t, s * noise + (1 - s) * x0)
    tgt = obj.target(x0, noise, sigma)
    assert torch.allclose(tgt, noise - x0)
    # ComfyUI CONST: D = x - sigma * out; with D == x0 the prediction is the target
    assert torch.allclose(obj.prediction(x0, x_t, sigma), tgt, atol=1e-4)


def test_shift_values_from_kohya():
    half = torch.tensor([0.5])
    assert shift_sigmas(half, 3.0).item() == pytest.approx(0.75, abs=1e-6)
    assert shift_sigmas(half, 3.1582).item() == pytest.approx(0.7595, abs=1e-4)
    # latent sizes for 512^2, 768^2, 1024^2 images (VAE /8)
    for lat, mu, sig in [(64, 0.63, 0.6525), (96, 0.8467, 0.6999), (128, 1.15, 0.7595)]:
        assert flux_shift_mu(lat, lat) == pytest.approx(mu, abs=1e-4)
        assert flux_shift_sigmas(half, flux_shift_mu(lat, lat)).item() == pytest.approx(sig, abs=1e-4)


def test_flow_sampling_formulas_match_generator_draws():
    g1, g2 = gen(11), gen(11)
    n = torch.randn(32, generator=g2)
    s = FlowObjective("shift", sigmoid_scale=1.5, discrete_flow_shift=3.0).sample_sigmas(32, g1)
    expect = shift_sigmas(torch.sigmoid(1.5 * n), 3.0)
    assert torch.allclose(s, expect.clamp(min=1e-4))
    g1, g2 = gen(12), gen(12)
    n = torch.randn(32, generator=g2)
    s = FlowObjective("flux_shift").sample_sigmas(32, g1, latent_hw=(128, 128))
    assert torch.allclose(s, flux_shift_sigmas(torch.sigmoid(n), 1.15), atol=1e-6)
    # flux_shift without latent size is an error users can act on
    with pytest.raises(ValueError, match="latent_hw"):
        FlowObjective("flux_shift").sample_sigmas(2, gen())


def test_flow_min_snr_ignored_with_one_warning(caplog):
    obj = FlowObjective("sigmoid")
    s = torch.tensor([0.2, 0.9])
    with caplog.at_level(logging.WARNING, logger="trainer.objectives"):
        w1 = obj.loss_weight(s, 5.0)
        w2 = obj.loss_weight(s, 5.0)
    assert torch.equal(w1, torch.ones(2)) and torch.equal(w2, torch.ones(2))
    assert sum("min_snr_gamma" in r.getMessage() for r in caplog.records) == 1


def test_min_max_timestep_respected():
    sig = sd_sigmas()
    obj = DiscreteObjective(sig, "eps", min_timestep=200, max_timestep=300)
    s = obj.sample_sigmas(4000, gen(1))
    t = obj.last_timesteps
    assert t.min().item() >= 200 and t.max().item() <= 299
    assert t.min().item() == 200 and t.max().item() == 299  # 4000 draws cover the range
    assert torch.equal(s, sig[t])
    assert torch.equal(obj.timesteps_for(s), t)
    # default covers [0, 1000)
    obj = DiscreteObjective(sig)
    obj.sample_sigmas(20000, gen(2))
    assert obj.last_timesteps.min().item() == 0 and obj.last_timesteps.max().item() == 999
    # min == max -> every t == max (kohya)
    obj = DiscreteObjective(sig, min_timestep=500, max_timestep=500)
    obj.sample_sigmas(5, gen())
    assert torch.equal(obj.last_timesteps, torch.full((5,), 500))
    for bad in [dict(min_timestep=-1), dict(min_timestep=10, max_timestep=5), dict(max_timestep=1001),
                dict(min_timestep=1000, max_timestep=1000)]:
        with pytest.raises(ValueError):
            DiscreteObjective(sig, **bad)


def test_determinism_and_generator_only():
    sig = sd_sigmas()
    x0 = torch.zeros(2, 4, 8, 8)
    for obj in [DiscreteObjective(sig), FlowObjective("sigmoid"), FlowObjective("uniform")]:
        torch.manual_seed(0)
        a = obj.sample_sigmas(8, gen(42), latent_hw=(8, 8)), make_noise(x0, gen(42), 0.1)
        torch.manual_seed(123)  # global RNG must not matter
        b = obj.sample_sigmas(8, gen(42), latent_hw=(8, 8)), make_noise(x0, gen(42), 0.1)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        c = obj.sample_sigmas(8, gen(43), latent_hw=(8, 8))
        assert not torch.equal(a[0], c)


def test_make_noise_offset_and_dtype():
    x0 = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    g = gen(9)
    base = torch.randn(2, 3, 4, 4, generator=g)
    off = torch.randn(2, 3, 1, 1, generator=g)
    n = make_noise(x0, gen(9), noise_offset=0.1)
    assert n.dtype == torch.float16 and n.shape == x0.shape
    assert torch.allclose(n.float(), (base + 0.1 * off).half().float())
    assert torch.equal(make_noise(x0.float(), gen(9)), base)
    if torch.cuda.is_available():  # noqa: SIM102 - same numbers on GPU
        assert torch.equal(make_noise(x0.float().cuda(), gen(9)).cpu(), base)
    with pytest.raises(TypeError):
        make_noise(x0, None)


def test_per_sample_loss():
    p = torch.tensor([[1.0, 3.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    t = torch.zeros(2, 2, 1, 1)
    assert torch.allclose(per_sample_loss(p, t), torch.tensor([5.0, 0.0]))
    assert torch.allclose(per_sample_loss(p, t, "l1"), torch.tensor([2.0, 0.0]))
    c = 0.1
    hub = 2 * c * (math.sqrt(1 + c * c) - c) / 2 + 2 * c * (math.sqrt(9 + c * c) - c) / 2
    assert per_sample_loss(p, t, "huber", c)[0].item() == pytest.approx(hub, rel=1e-5)
    assert per_sample_loss(p.half(), t.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="loss_type"):
        per_sample_loss(p, t, "l3")
    with pytest.raises(ValueError, match="shape"):
        per_sample_loss(p, t[:1])


def test_weighted_loss_pipeline_shapes():
    sig = sd_sigmas()
    obj = DiscreteObjective(sig, "v")
    x0, _ = _x0_noise((3, 4, 8, 8), 2)
    g = gen(0)
    noise = make_noise(x0, g)
    sigma = obj.sample_sigmas(3, g)
    x_t = obj.noisy(x0, noise, sigma)
    loss_b = per_sample_loss(obj.prediction(x0 + 0.01, x_t, sigma), obj.target(x0, noise, sigma))
    loss_b = loss_b * obj.loss_weight(sigma, 5.0)
    assert loss_b.shape == (3,) and torch.all(loss_b > 0)

"""sd-scripts' loss and noise options (trainer/noise.py, trainer/objectives.py): each formula against numbers worked
out by hand from sd-scripts' definitions on small fixed tensors, then the loop training with each option on the tiny
plain-torch trainer, bit-reproducibly."""
from __future__ import annotations

import math

import pytest
import torch
from tiny_trainer import TinyModel, installed, text_encoder

from trainer.config import TrainConfig
from trainer.loop import Trainer
from trainer.noise import StepNoise
from trainer.objectives import (SNR_CAP, ZSNR_LAST_ALPHA_CUMPROD, DiscreteObjective, FlowObjective, ddpm_sigmas,
                                per_sample_loss, zero_terminal_snr_sigmas)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sd_alphas_cumprod():
    """SD's scaled-linear DDPM schedule, by hand in float64 (betas linspace(sqrt(0.00085), sqrt(0.012))^2)."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    out, prod = [], 1.0
    for i in range(1000):
        beta = (lo + (hi - lo) * i / 999) ** 2
        prod *= 1.0 - beta
        out.append(prod)
    return out


ABAR = sd_alphas_cumprod()
SIG = {t: math.sqrt((1 - ABAR[t]) / ABAR[t]) for t in (0, 500, 999)}   # VE sigmas at three timesteps
T = torch.tensor([0, 500, 999])


# ------------------------------------------------------------------------------------------ huber / smooth_l1
def test_huber_thresholds_of_each_schedule_on_a_discrete_model():
    obj = DiscreteObjective(ddpm_sigmas(), "eps")
    sigma = obj.sigmas[T]
    c, scale = 0.1, 2.0
    const = obj.huber_threshold(sigma, "constant", c, scale)
    assert const.tolist() == pytest.approx([0.2, 0.2, 0.2])
    # exponential: exp(-a t) * scale, a = -ln(c) / 1000: scale at t=0, c*scale at t=1000
    expo = obj.huber_threshold(sigma, "exponential", c, scale)
    assert expo.tolist() == pytest.approx([2.0, 2.0 * 0.1 ** 0.5, 2.0 * 0.1 ** 0.999], rel=1e-6)
    # snr: (1 - c) / (1 + sigma)^2 + c, huber_scale unused
    snr = obj.huber_threshold(sigma, "snr", c, scale)
    assert snr.tolist() == pytest.approx([0.9 / (1 + SIG[t]) ** 2 + 0.1 for t in (0, 500, 999)], rel=1e-5)
    assert snr[0].item() == pytest.approx(0.94971, abs=1e-5)  # sigma_0 = 0.029167
    assert const.dtype == torch.float32 and const.shape == (3,)
    with pytest.raises(ValueError, match="huber_schedule"):
        obj.huber_threshold(sigma, "cosine")


def test_huber_thresholds_on_a_flow_model_use_t_1000_sigma():
    obj = FlowObjective("uniform")
    sigma = torch.tensor([0.25, 1.0])
    expo = obj.huber_threshold(sigma, "exponential", 0.1, 1.0)
    assert expo.tolist() == pytest.approx([0.1 ** 0.25, 0.1], rel=1e-6)
    # the flow SNR ((1 - s) / s)^2 in place of the discrete one: (1 - c)(1 - s)^2 + c
    snr = obj.huber_threshold(sigma, "snr", 0.1, 1.0)
    assert snr.tolist() == pytest.approx([0.9 * 0.75 ** 2 + 0.1, 0.1], rel=1e-6)


def test_huber_and_smooth_l1_with_a_threshold_per_sample():
    pred = torch.tensor([3.0, 3.0, 0.0, 4.0]).view(2, 2, 1, 1)
    target = torch.zeros(2, 2, 1, 1)
    c = torch.tensor([0.1, 1.0])
    hub = per_sample_loss(pred, target, "huber", c)
    want0 = 2 * 0.1 * (math.sqrt(9 + 0.01) - 0.1)             # both elements d = 3, c = 0.1
    want1 = (2 * 1.0 * (1.0 - 1.0) + 2 * 1.0 * (math.sqrt(16 + 1) - 1.0)) / 2   # d = 0 and 4, c = 1
    assert hub.tolist() == pytest.approx([want0, want1], rel=1e-6)
    sl1 = per_sample_loss(pred, target, "smooth_l1", c)
    assert sl1.tolist() == pytest.approx([2 * (math.sqrt(9.01) - 0.1), (2 * (math.sqrt(17) - 1)) / 2], rel=1e-6)
    with pytest.raises(ValueError, match="huber_c"):
        per_sample_loss(pred, target, "huber", None)


# ------------------------------------------------------------------------------------------ noise
def test_offset_noise_random_strength_and_adaptive_scale():
    x0 = torch.zeros(1, 2, 2, 2)
    x0[0, 0] = 1.0                                   # channel means 1.0 and -0.5 (|.| = 0.5)
    x0[0, 1] = torch.tensor([[-3.0, 1.0], [0.0, 0.0]])
    g = gen(3)
    base = torch.randn(1, 2, 2, 2, generator=g)
    z = torch.randn(1, 2, 1, 1, generator=g)
    plain = StepNoise(noise_offset=0.1).noise(x0, gen(3))
    assert torch.equal(plain, base + 0.1 * z)
    # adaptive: offset + 0.2 * |channel mean| = 0.3 and 0.2
    adaptive = StepNoise(noise_offset=0.1, adaptive_noise_scale=0.2).noise(x0, gen(3))
    assert torch.allclose(adaptive, base + torch.tensor([0.3, 0.2]).view(1, 2, 1, 1) * z, atol=1e-7)
    # a negative scale: the offset is clamped at 0 (0.1 - 1.0 and 0.1 - 0.5)
    assert torch.equal(StepNoise(noise_offset=0.1, adaptive_noise_scale=-1.0).noise(x0, gen(3)), base)
    # random strength: u ~ U(0, 1) drawn before the offset noise, offset = u * noise_offset
    g = gen(3)
    base = torch.randn(1, 2, 2, 2, generator=g)
    u = torch.rand(1, generator=g)
    z = torch.randn(1, 2, 1, 1, generator=g)
    rs = StepNoise(noise_offset=0.1, noise_offset_random_strength=True).noise(x0, gen(3))
    assert torch.allclose(rs, base + u * 0.1 * z, atol=1e-7)


@pytest.mark.parametrize("iterations", [1, 2])
def test_pyramid_noise_one_and_two_levels(iterations):
    """3x3 latents: level 0 is a second full-size noise; level 1 (3 / r, r in [2, 4)) is 1x1, a constant per
    channel after the bilinear upsample, and the last level. The sum is divided by its std."""
    x0 = torch.zeros(2, 1, 3, 3)
    g = gen(5)
    n0 = torch.randn(2, 1, 3, 3, generator=g)
    r0 = torch.rand((), generator=g, dtype=torch.float64).item() * 2 + 2
    z0 = torch.randn(2, 1, 3, 3, generator=g)
    want = n0 + z0
    if iterations == 2:
        r1 = torch.rand((), generator=g, dtype=torch.float64).item() * 2 + 2
        assert int(3 / r1) <= 1
        z1 = torch.randn(2, 1, 1, 1, generator=g)
        want = want + z1 * 0.3
    want = want / want.std()
    got = StepNoise(multires_noise_iterations=iterations).noise(x0, gen(5))
    assert 2 <= r0 < 4 and torch.allclose(got, want, atol=1e-6)
    assert got.std().item() == pytest.approx(1.0, rel=1e-6)
    # more levels than the size allows: it stops after the 1-pixel level, as sd-scripts does
    assert torch.equal(StepNoise(multires_noise_iterations=6).noise(x0, gen(5)),
                       StepNoise(multires_noise_iterations=2).noise(x0, gen(5)))


def test_input_perturbation_noise():
    noise = torch.randn(2, 1, 2, 2, generator=gen(1))
    g = gen(2)
    xi = torch.randn(2, 1, 2, 2, generator=g)
    assert torch.allclose(StepNoise(ip_noise_gamma=0.1).input_noise(noise, gen(2)), noise + 0.1 * xi)
    g = gen(2)
    u = torch.rand(1, generator=g)
    xi = torch.randn(2, 1, 2, 2, generator=g)
    got = StepNoise(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True).input_noise(noise, gen(2))
    assert torch.allclose(got, noise + u * 0.1 * xi)
    assert StepNoise().input_noise(noise, gen(2)) is noise


def test_flow_models_get_plain_noise_and_input_perturbation(caplog):
    cfg = TrainConfig(noise_offset=0.1, adaptive_noise_scale=0.01, multires_noise_iterations=3, ip_noise_gamma=0.1)
    flow = StepNoise.of(cfg, "flow")
    assert (flow.noise_offset, flow.adaptive_noise_scale, flow.multires_noise_iterations) == (0.0, 0.0, 0)
    assert flow.ip_noise_gamma == 0.1 and "ignored" in caplog.text
    x0 = torch.zeros(1, 4, 4, 4)
    assert torch.equal(flow.noise(x0, gen(0)), torch.randn(1, 4, 4, 4, generator=gen(0)))
    assert StepNoise.of(cfg, "discrete") == StepNoise(0.1, False, 0.01, 3, 0.3, 0.1, False)


def test_adaptive_noise_scale_needs_noise_offset():
    with pytest.raises(ValueError, match="needs noise_offset"):
        TrainConfig(adaptive_noise_scale=0.01)


# ------------------------------------------------------------------------------------------ loss weights
def _snr(t):
    return ABAR[t] / (1 - ABAR[t])


def test_debiased_v_pred_like_and_scale_v_weights():
    eps, v = DiscreteObjective(ddpm_sigmas(), "eps"), DiscreteObjective(ddpm_sigmas(), "v")
    sigma = eps.sigmas[T]
    capped = [min(_snr(t), SNR_CAP) for t in (0, 500, 999)]
    assert _snr(0) > SNR_CAP  # t = 0 is capped (SNR ~1175)
    assert eps.loss_weight(sigma, debiased_estimation_loss=True).tolist() == \
        pytest.approx([1 / math.sqrt(s) for s in capped], rel=1e-5)
    assert v.loss_weight(sigma, debiased_estimation_loss=True).tolist() == \
        pytest.approx([1 / (s + 1) for s in capped], rel=1e-5)
    assert eps.loss_weight(sigma, v_pred_like_loss=0.5).tolist() == \
        pytest.approx([1 + 0.5 * (s + 1) / s for s in capped], rel=1e-5)
    assert v.loss_weight(sigma, scale_v_pred_loss_like_noise_pred=True).tolist() == \
        pytest.approx([s / (s + 1) for s in capped], rel=1e-5)
    # they multiply, with min-SNR-gamma's own (uncapped) weight first
    both = eps.loss_weight(sigma, 5.0, debiased_estimation_loss=True)
    assert both.tolist() == pytest.approx([min(_snr(t), 5.0) / _snr(t) / math.sqrt(c)
                                           for t, c in zip((0, 500, 999), capped)], rel=1e-5)
    assert torch.equal(eps.loss_weight(sigma), torch.ones(3))
    # sd-scripts' rules
    with pytest.raises(ValueError, match="scale_v_pred_loss_like_noise_pred"):
        eps.loss_weight(sigma, scale_v_pred_loss_like_noise_pred=True)
    with pytest.raises(ValueError, match="v_pred_like_loss"):
        v.loss_weight(sigma, v_pred_like_loss=0.5)


def test_flow_models_ignore_the_snr_weights(caplog):
    flow = FlowObjective("uniform")
    s = torch.tensor([0.2, 0.7])
    w = flow.loss_weight(s, 5.0, v_pred_like_loss=0.5, debiased_estimation_loss=True)
    assert torch.equal(w, torch.ones(2)) and "ignored" in caplog.text
    with pytest.raises(ValueError, match="v-prediction"):
        flow.loss_weight(s, scale_v_pred_loss_like_noise_pred=True)


# ------------------------------------------------------------------------------------------ zero terminal SNR
def test_zero_terminal_snr_sigmas():
    """sqrt(abar) shifted to end at 0 and scaled to keep the first value; the last abar (0: sigma infinite) is
    ComfyUI's zsnr value, so the last sigma is finite. sd-scripts computes the same through the betas."""
    root = [math.sqrt(a) for a in ABAR]
    new = [((r - root[-1]) * root[0] / (root[0] - root[-1])) ** 2 for r in root]
    assert new[-1] == pytest.approx(0.0, abs=1e-20)
    # sd-scripts' way: fixed betas -> alphas -> cumprod gives the same alphas_cumprod
    alphas = [new[0]] + [new[i] / new[i - 1] for i in range(1, 1000)]
    prod, via_betas = 1.0, []
    for a in alphas:
        prod *= a
        via_betas.append(prod)
    assert via_betas[500] == pytest.approx(new[500], rel=1e-9) and via_betas[-1] == 0.0
    got = zero_terminal_snr_sigmas(ddpm_sigmas())
    for t in (0, 1, 500, 998):
        assert got[t].item() == pytest.approx(math.sqrt((1 - new[t]) / new[t]), rel=1e-5)
    assert got[0].item() == pytest.approx(SIG[0], rel=1e-5)          # the first step is unchanged
    last = math.sqrt((1 - ZSNR_LAST_ALPHA_CUMPROD) / ZSNR_LAST_ALPHA_CUMPROD)
    assert got[-1].item() == pytest.approx(last, rel=1e-6) and 4518 < last < 4519
    assert torch.all(got[1:] > got[:-1]) and torch.all(torch.isfinite(got))


def test_zero_terminal_snr_objective_trains_on_the_rescaled_table_and_weights_by_the_original_snr():
    obj = DiscreteObjective(ddpm_sigmas(), "v", zero_terminal_snr=True)
    assert torch.equal(obj.sigmas, zero_terminal_snr_sigmas(ddpm_sigmas()))
    assert torch.equal(obj.sigmas_for(T), obj.sigmas[T])
    sigma = obj.sigmas[T]
    # sd-scripts computes all_snr before it rescales the betas: min-SNR-gamma sees the original SNR
    w = obj.loss_weight(sigma, 5.0)
    assert w.tolist() == pytest.approx([min(_snr(t), 5.0) / (_snr(t) + 1) for t in (0, 500, 999)], rel=1e-5)
    # the huber snr schedule uses the rescaled schedule (sd-scripts' fixed alphas_cumprod): c at the last step
    assert obj.huber_threshold(sigma[-1:], "snr", 0.1).item() == pytest.approx(0.1, abs=1e-6)
    # a table already at zero terminal SNR (ComfyUI's ModelSamplingDiscrete zsnr) is used as it is
    again = DiscreteObjective(obj.sigmas, "v", zero_terminal_snr=True)
    assert torch.equal(again.sigmas, obj.sigmas) and again.snr_sigmas is None
    # v target at the last step is ~ -x0 (pure noise input)
    x0, noise = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    assert obj.target(x0, noise, sigma[-1:]).item() == pytest.approx(-1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ the loop
def _train(data, steps=3, prediction="eps", **options):
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=3e-3, seed=2, **options)
    obj = DiscreteObjective(ddpm_sigmas(), prediction, zero_terminal_snr=cfg.zero_terminal_snr)
    res = Trainer(model=model, network=net, data=data, cfg=cfg, objective=obj, text_encoder=text_encoder).run()
    net.remove()
    return net.kohya_state_dict(), res.losses


OPTIONS = [
    ("eps", dict(loss_type="huber")),
    ("eps", dict(loss_type="smooth_l1", huber_schedule="exponential", huber_c=0.2, huber_scale=2.0)),
    ("eps", dict(loss_type="huber", huber_schedule="constant")),
    ("eps", dict(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05)),
    ("eps", dict(multires_noise_iterations=4, multires_noise_discount=0.5)),
    ("eps", dict(ip_noise_gamma=0.2, ip_noise_gamma_random_strength=True)),
    ("eps", dict(debiased_estimation_loss=True, v_pred_like_loss=0.3)),
    ("v", dict(scale_v_pred_loss_like_noise_pred=True, zero_terminal_snr=True, min_snr_gamma=5.0)),
]


@pytest.mark.parametrize("prediction,options", OPTIONS, ids=lambda v: ",".join(v) if isinstance(v, dict) else v)
def test_the_loop_trains_with_each_option_bit_reproducibly(data, prediction, options):
    sd1, losses1 = _train(data, prediction=prediction, **options)
    sd2, losses2 = _train(data, prediction=prediction, **options)
    assert losses1 == losses2 and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert all(math.isfinite(v) for v in losses1)
    _, plain = _train(data, prediction=prediction)
    assert losses1 != plain  # the option changed the step


def test_input_perturbation_reaches_the_noisy_input_only(data):
    """The loop's noisy input is made with noise + gamma * xi, the target with the noise itself."""
    seen = {}

    class Spy(DiscreteObjective):
        def noisy(self, x0, noise, sigma):
            seen.setdefault("noisy", noise.clone())
            return super().noisy(x0, noise, sigma)

        def target(self, x0, noise, sigma):
            seen.setdefault("target", noise.clone())
            return super().target(x0, noise, sigma)

    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=1, seed=2, ip_noise_gamma=0.5)
    Trainer(model=model, network=net, data=data, cfg=cfg, objective=Spy(ddpm_sigmas(), "eps"),
            text_encoder=text_encoder).run()
    diff = seen["noisy"] - seen["target"]
    assert diff.abs().max() > 0.05
    assert diff.std().item() == pytest.approx(0.5, rel=0.35)  # 0.5 * randn over a few hundred values

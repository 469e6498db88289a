"""Unit tests of each family's own mechanism (penalties, corruption, latent scores, context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from ae_anomaly.config import load_config
from ae_anomaly.detectors import load_detector
from ae_anomaly.errors import AeAnomalyError, ConfigError, DataError
from ae_anomaly.models import build_model
from ae_anomaly.models.base import AEOutput
from ae_anomaly.models.cvae import time_context


def _brute_force_jacobian_norm(encode, x: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ||d code / d x||_F^2, one full Jacobian per sample."""
    norms = [torch.autograd.functional.jacobian(lambda v: encode(v[None])[0], xi).pow(2).sum()
             for xi in x]
    return torch.stack(norms).mean()


# ---------------------------------------------------------------- contractive
def test_contractive_penalty_equals_brute_force_jacobian_norm(tiny_config):
    torch.manual_seed(0)
    net = build_model(tiny_config("contractive", arch="dense", hidden=[7], latent_dim=3),
                      n_channels=2, window=5)
    x = torch.randn(6, 2, 5)
    net.train()
    code, penalty = net.code_and_penalty(x)
    expected = _brute_force_jacobian_norm(net.encode, x)
    torch.testing.assert_close(penalty, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(code, net.encode(x))
    # The penalty is differentiable with respect to the weights (not the last bias: the
    # Jacobian does not depend on it).
    penalty.backward()
    weights = [p for n, p in net.net.encoder.named_parameters() if n.endswith("weight")]
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_contractive_hutchinson_estimate_is_unbiased(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config("contractive", arch="dense", hidden=[7], latent_dim=3,
                      jacobian="hutchinson", n_projections=4000)
    net = build_model(cfg, n_channels=2, window=5)
    x = torch.randn(4, 2, 5)
    net.train()
    estimate = net.code_and_penalty(x)[1]
    torch.testing.assert_close(estimate, _brute_force_jacobian_norm(net.encode, x), rtol=0.05,
                               atol=1e-6)


def test_contractive_penalty_only_in_training_with_gradients(tiny_config):
    net = build_model(tiny_config("contractive", arch="conv"), n_channels=3, window=16)
    x = torch.randn(4, 3, 16)
    net.train()
    out = net(x)
    assert out.penalty is not None and out.penalty > 0
    assert net.loss(x, out) > torch.mean((out.recon - x) ** 2)
    net.eval()
    assert net(x).penalty is None
    net.train()
    with torch.no_grad():
        assert net(x).penalty is None


# ---------------------------------------------------------------- denoising
def test_denoising_corrupts_only_in_training(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config("denoising", arch="dense", noise_std=0.5, mask_prob=0.3)
    net = build_model(cfg, n_channels=3, window=8)
    x = torch.randn(5, 3, 8)
    net.eval()
    clean = net(x).recon
    torch.testing.assert_close(clean, net.decode(net.encode(x)))
    torch.testing.assert_close(net(x).recon, clean)  # eval: deterministic, no corruption
    net.train()
    a, b = net(x).recon, net(x).recon
    assert not torch.allclose(a, clean) and not torch.allclose(a, b)
    corrupted = net.corrupt(x)
    assert 0.15 < float((corrupted == 0).float().mean()) < 0.45  # masked elements
    # The target is the clean input.
    out = net(x)
    torch.testing.assert_close(net.loss(x, out), torch.mean((out.recon - x) ** 2))


# ---------------------------------------------------------------- vae
def test_vae_latent_score_is_larger_out_of_distribution(tiny_config):
    torch.manual_seed(0)
    net = build_model(tiny_config("vae", arch="dense", score="latent"), n_channels=3, window=8)
    train = torch.randn(400, 3, 8)
    net.post_fit(train)
    with torch.no_grad():
        mu = net.encode(train)
        assert not torch.equal(net.latent_precision, torch.eye(net.latent_dim))
        torch.testing.assert_close(net.latent_mean, mu.mean(0), rtol=1e-4, atol=1e-5)
        inside = net.latent_score(mu)
        spread = mu.std(0)
        outside = net.latent_score(net.latent_mean + 6 * spread * torch.sign(torch.randn_like(mu)))
        assert inside.mean() == pytest.approx(1.0, abs=0.2)  # chi2 / d on training codes
        assert outside.min() > inside.max()
        # errors broadcast the window's latent score over its elements.
        x = train[:4]
        err = net.errors(x, net(x))
        assert err.shape == x.shape
        torch.testing.assert_close(err[:, 0, 0], net.latent_score(net.encode(x)))
        assert torch.all(err == err[:, :1, :1])


@pytest.mark.parametrize("score", ["elbo", "recon_prob"])
def test_vae_scores_do_not_depend_on_the_batch(tiny_config, score):
    torch.manual_seed(0)
    net = build_model(tiny_config("vae", score=score, mc_samples=5), n_channels=3, window=16)
    net.eval()
    x = torch.randn(6, 3, 16)
    with torch.no_grad():
        whole = net.errors(x, net(x))
        alone = net.errors(x[2:3], net(x[2:3]))
    assert whole.shape == x.shape and torch.isfinite(whole).all()
    torch.testing.assert_close(alone[0], whole[2], rtol=1e-5, atol=1e-5)


def test_vae_elbo_score_is_the_negative_elbo(tiny_config):
    torch.manual_seed(0)
    net = build_model(tiny_config("vae", arch="dense", beta=1.0), n_channels=2, window=4)
    net.eval()
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        out = net(x)
        per_window = net.errors(x, out).sum(dim=(1, 2))
        expected = net.nll(x, out.recon).sum(dim=(1, 2)) + net.kl(out.mu, out.logvar)
        torch.testing.assert_close(per_window, expected)
        torch.testing.assert_close(net.loss(x, out), expected.mean() / x[0].numel())


# ---------------------------------------------------------------- rae
def test_rae_log_density_matches_sklearn(tiny_config):
    torch.manual_seed(0)
    net = build_model(tiny_config("rae", arch="dense", gmm_components=3), n_channels=3,
                      window=8)
    train = torch.randn(300, 3, 8)
    net.post_fit(train)
    with torch.no_grad():
        z = net.encode(train).double().numpy()
    gmm = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, random_state=0).fit(z)
    got = net.latent_log_density(torch.as_tensor(z, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), gmm.score_samples(z), rtol=1e-4, atol=1e-3)
    assert float(net.latent_term(torch.as_tensor(z, dtype=torch.float32)).mean()) == (
        pytest.approx(0.0, abs=1e-4))


def test_rae_mixture_survives_save_load(fitted, tmp_path):
    det = fitted("rae")
    buffers = {k: v.clone() for k, v in det.network_.named_buffers()}
    assert set(buffers) >= {"gmm_means", "gmm_prec_chol", "gmm_log_weights",
                            "latent_nll_offset"}
    assert buffers["gmm_means"].abs().sum() > 0  # fitted, not the initial zeros
    back = load_detector(det.save(tmp_path / "rae"))
    for k, v in back.network_.named_buffers():
        torch.testing.assert_close(v, buffers[k], rtol=0, atol=0)


def test_rae_samples_windows(fitted):
    det = fitted("rae")
    first = det.sample_windows(5, seed=3)
    assert first.shape == (5, len(det.feature_names_), det.window.length)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, det.sample_windows(5, seed=3))
    assert not np.array_equal(first, det.sample_windows(5, seed=4))
    # In the original units: near the training levels, not the scaled ones.
    center = det.scaler_.center_[None, :, None]
    scale = det.scaler_.scale_[None, :, None]
    assert np.abs((first - center) / scale).max() < 20


def test_sampling_needs_a_generative_model(fitted):
    with pytest.raises(AeAnomalyError, match="cannot generate"):
        fitted("conv_ae").sample_windows(2)


# ---------------------------------------------------------------- cvae
def test_cvae_uses_the_context(tiny_config):
    torch.manual_seed(0)
    net = build_model(tiny_config("cvae", entity_buckets=3), n_channels=3, window=16)
    net.eval()
    x = torch.randn(4, 3, 16)
    ts = np.array(["2026-01-05T03:00", "2026-01-07T15:30"], dtype="datetime64[ns]")
    ctx = torch.from_numpy(net.context_features(ts, "server-01"))
    assert ctx.shape == (2, 7)
    with torch.no_grad():
        a = net(x, ctx[:1].expand(4, -1)).recon
        b = net(x, ctx[1:].expand(4, -1)).recon
        assert not torch.allclose(a, b)
        torch.testing.assert_close(a, net(x, ctx[:1].expand(4, -1)).recon)
    with pytest.raises(ValueError, match="context"):
        net(x)


def test_time_context_features():
    ts = np.array(["2026-01-05T00:00", "2026-01-05T06:00", "2026-01-08T12:00"],
                  dtype="datetime64[ns]")  # a Monday midnight, 6 am, Thursday noon
    f = time_context(ts)
    np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(f[1, :2], [1, 0], atol=1e-6)
    np.testing.assert_allclose(f[2, :2], [0, -1], atol=1e-6)
    week = 2 * np.pi * 3.5 / 7
    np.testing.assert_allclose(f[2, 2:], [np.sin(week), np.cos(week)], atol=1e-6)


def test_cvae_detector_needs_timestamps(fitted, synthetic):
    det = fitted("cvae")
    assert det.network_.needs_context
    with pytest.raises(DataError, match="conditions on time"):
        det.score(synthetic.score.drop(columns=["timestamp"]))
    # The context comes from the scored rows' own timestamps: shifting time changes scores.
    shifted = synthetic.score.assign(timestamp=synthetic.score["timestamp"]
                                     + np.timedelta64(9, "h"))
    assert not np.allclose(det.score(shifted), det.score(synthetic.score))


# ---------------------------------------------------------------- shared options
@pytest.mark.parametrize("name", ["denoising", "contractive", "vae", "rae", "cvae"])
@pytest.mark.parametrize("arch", ["conv", "dense"])
def test_every_family_honours_dropout_and_l1(tiny_config, name, arch):
    torch.manual_seed(0)
    net = build_model(tiny_config(name, arch=arch, dropout=0.5), n_channels=3, window=16)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in net.modules())
    x = torch.randn(4, 3, 16)
    extra = (torch.zeros(4, 4),) if net.needs_context else ()
    net.eval()
    with torch.no_grad():
        out = net(x, *extra)
        plain = net.loss(x, out)
        net.l1_activity = 0.5
        with_l1 = net.loss(x, out)
    torch.testing.assert_close(with_l1 - plain, 0.5 * out.code.abs().mean())


def test_dense_families_take_tabular_rows(tiny_config):
    for name in ["denoising", "contractive", "vae", "rae"]:
        net = build_model(tiny_config(name, arch="dense"), n_channels=5, window=1)
        net.post_fit(torch.randn(50, 5))
        net.eval()
        x = torch.randn(7, 5)
        with torch.no_grad():
            out: AEOutput = net(x)
            assert out.recon.shape == x.shape and net.errors(x, out).shape == x.shape


def test_conv_arch_refuses_tabular_rows(tiny_config):
    with pytest.raises(ConfigError, match="arch: dense"):
        build_model(tiny_config("vae", arch="conv"), n_channels=5, window=1)


def test_families_are_selectable_in_config():
    cfg = load_config(None, ["model.name=rae", "model.gmm_components=2",
                             "model.latent_weight=0.5"])
    assert cfg.model.name == "rae" and cfg.model.gmm_components == 2
    cfg = load_config(None, ["model.name=vae", "model.beta=4", "model.score=latent"])
    assert cfg.model.beta == 4 and cfg.model.score == "latent"
    with pytest.raises(ConfigError, match="noise_std"):
        load_config(None, ["model.name=vae", "model.noise_std=0.1"])
    with pytest.raises(ConfigError, match="context"):
        load_config(None, ["model.name=cvae", "model.time_features=false"])

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from models.losses import ae_loss, bce_nats, kl_nats, log_normal
from models.nets import AE, VAE


def test_kl_matches_hand_computation():
    # mu = (1, 0), sigma^2 = (1, 4): KL = 1/2 [(1 + 1 - 1 - 0) + (4 + 0 - 1 - log 4)]
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    assert kl_nats(mu, logvar).item() == torch.tensor(0.5 * (1 + 3 - math.log(4))).item()


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_nats(mu, logvar), expected)


def test_kl_is_zero_at_the_prior():
    assert kl_nats(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max().item() == 0.0


def test_bce_of_known_logits():
    # logit 0 -> p = 1/2 -> log 2 nats per pixel whatever the target
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(bce_nats(torch.zeros(2, 1, 28, 28), x), torch.full((2,), 784 * math.log(2)))
    # target 1 with logit l costs log(1 + exp(-l)); target 0 costs log(1 + exp(l))
    logits = torch.full((1, 784), 2.0)
    assert math.isclose(bce_nats(logits, torch.ones(1, 784)).item(), 784 * math.log1p(math.exp(-2)), rel_tol=1e-5)
    assert math.isclose(bce_nats(logits, torch.zeros(1, 784)).item(), 784 * math.log1p(math.exp(2)), rel_tol=1e-5)


def test_bernoulli_nats_agrees_with_torch_in_value_and_gradient():
    """Our cross-entropy (no float32 log1p) against torch's, at 0, moderate and saturated logits, grey and binary
    targets, a target broadcast over codes; float64 torch as the yardstick."""
    from models.losses import bernoulli_nats

    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.zeros(8), torch.randn(400, generator=g) * 4, torch.tensor([-90.0, -30.0, 30.0, 90.0])])
    logits = logits.expand(3, -1).clone()
    x = torch.rand(logits.shape[1], generator=g)
    x[:100] = x[:100].round()  # some binary pixels
    ref = logits.double().requires_grad_()
    expected = F.binary_cross_entropy_with_logits(ref, x.double().expand_as(ref), reduction="none")
    expected.sum().backward()
    ours = logits.clone().requires_grad_()
    got = bernoulli_nats(ours, x)  # x [P] broadcast to [3, P]
    got.sum().backward()
    assert got.shape == logits.shape
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-5)
    assert torch.allclose(ours.grad.double(), ref.grad, atol=1e-6)  # sigmoid(l) - x, also at l = 0
    assert ours.grad[:, :8].sub(0.5 - x[:8]).abs().max() < 1e-7


@pytest.mark.parametrize("prior", ["normal", "mixture"])
def test_vae_loss_weights_kl_by_beta(prior):
    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(4, 784, generator=g), torch.rand(4, 784, generator=g)
    mu, logvar, z = (torch.randn(4, 3, generator=g) for _ in range(3))
    vae = VAE(latent_dim=3, prior=prior, prior_components=5)
    loss1, recon, kl = vae.loss_terms((logits, mu, logvar, z), x, beta=1.0)
    loss3 = vae.loss_terms((logits, mu, logvar, z), x, beta=3.0)[0]
    torch.testing.assert_close(loss1, recon + kl)
    torch.testing.assert_close(loss3, recon + 3 * kl)
    torch.testing.assert_close(recon, bce_nats(logits, x).mean())
    torch.testing.assert_close(ae_loss(logits, x), recon)


def test_mixture_prior_density_matches_torch_distributions():
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, prior="mixture", prior_components=3)
    with torch.no_grad():
        vae.prior.means.normal_(), vae.prior.logvars.normal_(0, 0.5), vae.prior.logits.normal_()
    p = vae.prior
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=p.logits),
        torch.distributions.Independent(torch.distributions.Normal(p.means, (0.5 * p.logvars).exp()), 1),
    )
    z = torch.randn(6, 5, 4)
    torch.testing.assert_close(vae.prior_log_prob(z), mixture.log_prob(z))
    # N(0, I) when the VAE has no learned prior
    torch.testing.assert_close(VAE(latent_dim=4).prior_log_prob(z), log_normal(z, torch.zeros(4), torch.zeros(4)))


def test_mixture_prior_draws_follow_its_weights_and_components():
    vae = VAE(latent_dim=2, prior="mixture", prior_components=2)
    with torch.no_grad():  # components at (-5, 0) and (5, 0), sd 0.5, weights 1/4 and 3/4
        vae.prior.means.copy_(torch.tensor([[-5.0, 0.0], [5.0, 0.0]]))
        vae.prior.logvars.fill_(math.log(0.25))
        vae.prior.logits.copy_(torch.tensor([0.0, math.log(3.0)]))
    z = vae.sample_prior(20_000, torch.Generator().manual_seed(0))
    right = z[:, 0] > 0
    assert abs(right.double().mean().item() - 0.75) < 0.01
    assert abs(z[right, 0].mean().item() - 5.0) < 0.02 and abs(z[right].std(0) - 0.5).max().item() < 0.02
    # the same generator seed gives the same draws
    torch.testing.assert_close(
        vae.sample_prior(10, torch.Generator().manual_seed(3)), vae.sample_prior(10, torch.Generator().manual_seed(3))
    )


def test_learned_prior_kl_estimate_is_unbiased():
    """With one component the KL to the prior has a closed form; the one-sample estimate averages to it."""
    vae = VAE(latent_dim=3, prior="mixture", prior_components=1)
    m, s2 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.0])
    with torch.no_grad():
        vae.prior.means.copy_(m[None]), vae.prior.logvars.copy_(s2.log()[None])
    mu, logvar = torch.tensor([[0.0, 0.3, 1.0]]), torch.tensor([[0.2, -0.5, 0.0]])
    torch.manual_seed(0)
    mu_n, logvar_n = mu.expand(200_000, 3), logvar.expand(200_000, 3)
    estimate = vae.kl(mu_n, logvar_n, VAE.reparameterize(mu_n, logvar_n)).double().mean().item()
    exact = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(m, s2.sqrt())).sum().item()
    assert abs(estimate - exact) < 0.01, (estimate, exact)


def test_reparameterization_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([0.5, -1.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(9.0)], requires_grad=True)
    torch.manual_seed(3)
    z = VAE.reparameterize(mu, logvar)
    torch.manual_seed(3)
    eps = torch.randn(2)
    z.sum().backward()
    # z = mu + exp(logvar/2) * eps: dz/dmu = 1, dz/dlogvar = exp(logvar/2) * eps / 2
    torch.testing.assert_close(mu.grad, torch.ones(2))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.tensor([1.0, 3.0]) * eps)


def test_shapes():
    x = torch.rand(5, 1, 28, 28)
    vae, ae = VAE(latent_dim=7, hidden=(32,)), AE(latent_dim=7, hidden=(32, 16))
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 7)
    assert vae.decode(mu).shape == (5, 1, 28, 28)
    assert ae.encode(x).shape == (5, 7)
    assert ae.decode(ae.encode(x)).shape == (5, 1, 28, 28)
    logits, mu, logvar, z = vae(x)
    assert logits.shape == x.shape and z.shape == mu.shape


def test_quality_metrics_on_known_cases():
    from models.quality import active_units, class_histogram, frechet_distance, inception_score, knn_accuracy

    labels = torch.arange(1000) % 10
    perfect = torch.nn.functional.one_hot(labels, 10).float()  # a perfect classifier on an even mix
    assert abs(inception_score(perfect) - 10.0) < 1e-6
    assert abs(inception_score(torch.full((100, 10), 0.1)) - 1.0) < 1e-9  # no confidence at all
    assert class_histogram(perfect) == [0.1] * 10
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2000, 8, generator=g)
    assert abs(frechet_distance(feats, feats)) < 1e-6
    shifted = frechet_distance(feats, feats + 3.0)  # mean moved by 3 in each of 8 dimensions: 8 * 9
    assert abs(shifted - 72.0) < 1e-3
    codes = torch.nn.functional.one_hot(labels, 10).float() * 5 + 0.01 * torch.randn(1000, 10, generator=g)
    assert knn_accuracy(codes[:800], labels[:800], codes[800:], labels[800:]) == 1.0
    # overlapping classes: the vote of the 5 nearest by true Euclidean distance, test point by test point, whichever
    # exact search scikit-learn picks (a k-d tree for 8 dimensions, brute force for 16)
    for dims in (8, 16):
        train, test = torch.randn(3000, dims, generator=g), torch.randn(700, dims, generator=g)
        train_labels, test_labels = (
            torch.randint(0, 10, (3000,), generator=g),
            torch.randint(0, 10, (700,), generator=g),
        )
        train_labels[train[:, 0] > 0.5] = 3  # a region where 3 wins the vote
        exact = torch.cdist(test.double(), train.double(), compute_mode="donot_use_mm_for_euclid_dist")
        votes = torch.nn.functional.one_hot(train_labels[exact.topk(5, largest=False).indices], 10)
        expected = (votes.sum(1).argmax(1) == test_labels).double().mean().item()
        assert knn_accuracy(train, train_labels, test, test_labels) == pytest.approx(expected, abs=1e-12), dims
    means = torch.cat([torch.randn(500, 3, generator=g), 1e-3 * torch.randn(500, 2, generator=g)], 1)
    assert active_units(means) == 3


def test_prior_mismatch_scores_the_vaes_aggregate_posterior_not_its_means():
    """A VAE whose q(z|x) is N(0, I) for every x fills the prior exactly, though all its means sit at 0."""
    from models.latent import codes
    from models.metrics import prior_mismatch
    from models.nets import VAE

    torch.manual_seed(0)
    vae = VAE(latent_dim=4, hidden=(16,))
    torch.nn.init.zeros_(vae.to_code.weight)
    torch.nn.init.zeros_(vae.to_code.bias)
    images = torch.rand(4000, 1, 28, 28)
    assert prior_mismatch(codes(vae, images, sample=True)) < 0.05
    assert prior_mismatch(torch.randn(4000, 4) * 3 + 2) > 5


def test_metrics_schema_refuses_missing_and_misspelt_keys():
    """metrics.json has one typed shape: a run that forgets a score, or misspells one, fails at evaluation."""
    import pydantic

    from models.scores import ModelMetrics, SamplerScores

    scores = {"inception_score": 9.0, "frechet_distance": 3.0, "class_histogram": [0.1] * 10}
    good = {
        "test_recon_nats": 70.0,
        "prior_mismatch_nats": 1.0,
        "knn_accuracy": 0.9,
        "active_units": 4,
        "samplers": {"prior": scores},
        **scores,
    }
    assert isinstance(ModelMetrics.model_validate(good).samplers["prior"], SamplerScores)
    with pytest.raises(pydantic.ValidationError, match="knn_accuracy"):
        ModelMetrics.model_validate({k: v for k, v in good.items() if k != "knn_accuracy"})
    with pytest.raises(pydantic.ValidationError, match="inception_scor"):
        ModelMetrics.model_validate({**good, "inception_scor": 9.0})
    with pytest.raises(pydantic.ValidationError, match="frechet_distance"):
        ModelMetrics.model_validate({**good, "samplers": {"gmm": {**scores, "frechet_distance": -1.0}}})


@pytest.mark.parametrize(
    "body, head, prior", [("mlp", False, "normal"), ("conv", True, "normal"), ("mlp", False, "mixture")]
)
def test_importance_sampled_nll_is_exact_where_the_answer_is_known(body, head, prior):
    """With q(z|x) = p(z) (N(0, I), or a learned mixture of copies of q) and a decoder that ignores z, every importance weight is log p(x) itself: the
    estimate must be that, for any k: to float precision in float32, within 0.02% in bfloat16 (these random models
    score hundreds of nats; on trained ones bfloat16 moved the estimate by under 0.01 nats)."""
    from models.losses import bce_nats
    from models.metrics import iwae_nll

    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=(16,), body=body, pixel_head=head, prior=prior, prior_components=4).eval()
    with torch.no_grad():
        model.to_code.weight.zero_()
        model.to_code.bias.zero_()  # mean 0, log-variance 0: q is the prior N(0, I)
        if prior == "mixture":  # q(z|x) = N(m, s^2) and a learned prior whose every component is N(m, s^2)
            m, logvar = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -0.2, 0.0])
            model.to_code.bias.copy_(torch.cat([m, logvar]))
            model.prior.means.copy_(m.expand(4, 3)), model.prior.logvars.copy_(logvar.expand(4, 3))
            model.prior.logits.normal_()
        first = next(m for m in model.decoder if isinstance(m, torch.nn.Linear))
        first.weight.zero_()  # the decoder's features no longer depend on z
        if head:
            model.head.context.weight.normal_(0, 1.0)  # but the pixel head uses the earlier pixels
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    exact = bce_nats(model.decode(torch.zeros(6, 3), x), x).double()
    for k in (1, 7, 50):
        nll, se = iwae_nll(model, x, k=k, per_pass=20)  # chunks that split the k samples, too
        assert nll == pytest.approx(exact.mean().item(), abs=1e-3)
        assert se == pytest.approx((exact.std() / math.sqrt(6)).item(), abs=1e-3)
    assert iwae_nll(model, x, k=10, dtype=torch.bfloat16)[0] == pytest.approx(exact.mean().item(), rel=2e-4)

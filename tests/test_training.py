"""Training-loop guards that do not time anything: the speed-critical shape of the loop is asserted instead."""

import math

import pytest
import torch

from models.losses import bce_nats
from models.nets import AE, VAE
from models.train import CHECK_EVERY, NonFiniteLossError, fit, make_optimizer, train_epoch


class _SyncCounter:
    """Counts calls that copy a tensor's value to the host (each one stalls a CUDA stream)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(self_, *a, _original=original, **k):
                self.calls += 1
                return _original(self_, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("cls", [VAE, AE])
def test_training_step_does_no_per_item_work_and_no_host_sync(monkeypatch, cls):
    torch.manual_seed(0)
    images = torch.rand(1000, 1, 28, 28)
    model = cls(latent_dim=4, hidden=(32,))
    forwards = []
    model.register_forward_hook(lambda mod, inp, out: forwards.append(inp[0].shape[0]))
    optimizer = make_optimizer(model, lr=1e-3)  # as fit() builds it
    batch = 10  # 100 steps
    counter = _SyncCounter(monkeypatch)
    stats = train_epoch(model, images, optimizer, batch_size=batch, progress=False)
    steps = math.ceil(1000 / batch)
    # one forward per batch, never per image
    assert len(forwards) == steps and forwards[0] == batch
    # host syncs: one per CHECK_EVERY steps (the non-finite check) and one at the end of the epoch
    assert counter.calls <= steps // CHECK_EVERY + 2, f"{counter.calls} host syncs in {steps} steps"
    assert math.isfinite(stats["loss"])


def test_same_seed_same_history():
    images = torch.rand(600, 1, 28, 28)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = VAE(latent_dim=3, hidden=(16,))
        runs.append(fit(model, images[:500], images[500:], epochs=2, batch_size=50, lr=1e-3, seed=7, progress=False))
    assert runs[0] == runs[1]


def test_absurd_learning_rate_stops_with_a_clear_error():
    torch.manual_seed(0)
    images = torch.rand(600, 1, 28, 28)
    seen = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 1.*lower --lr"):
        fit(
            VAE(latent_dim=3, hidden=(16,)),
            images[:500],
            images[500:],
            epochs=3,
            batch_size=50,
            lr=1e12,
            seed=0,
            progress=False,
            on_epoch=lambda rec, state: seen.append(rec),
        )
    assert not seen, "no checkpoint or record is written for a diverged epoch"


def test_conv_body_shapes_and_checkpoint_round_trip(tmp_path):
    from models import load_checkpoint
    from models.checkpoint import save_checkpoint

    x = torch.rand(3, 1, 28, 28)
    for cls in (VAE, AE):
        model = cls(latent_dim=5, hidden=(64,), body="conv")
        out = model(x)
        assert (out[0] if cls is VAE else out).shape == x.shape
        save_checkpoint(tmp_path / "m.pt", {"arch": model.arch(), "model": model.state_dict()})
        loaded = load_checkpoint(tmp_path / "m.pt")
        assert loaded.body == "conv"
        torch.testing.assert_close(loaded.decode(torch.zeros(2, 5)), model.eval().decode(torch.zeros(2, 5)))


def test_a_learned_prior_survives_its_checkpoint(tmp_path):
    from models import load_checkpoint
    from models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(16,), prior="mixture", prior_components=7)
    with torch.no_grad():
        model.prior.means.normal_(), model.prior.logits.normal_()
    save_checkpoint(tmp_path / "m.pt", {"arch": model.arch(), "model": model.state_dict()})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.arch()["prior"] == "mixture" and loaded.prior.components == 7
    z = torch.randn(10, 4)
    torch.testing.assert_close(loaded.prior_log_prob(z), model.prior_log_prob(z))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(loaded.sample_prior(5, g()), model.sample_prior(5, g()))
    # a checkpoint written before learned priors existed has no "prior" entry: N(0, I)
    plain = VAE(latent_dim=4, hidden=(16,))
    arch = {k: v for k, v in plain.arch().items() if not k.startswith("prior")}
    save_checkpoint(tmp_path / "old.pt", {"arch": arch, "model": plain.state_dict()})
    assert load_checkpoint(tmp_path / "old.pt").prior is None


def test_dynamic_binarization_feeds_fresh_binary_images():
    torch.manual_seed(0)
    images = torch.full((64, 1, 28, 28), 0.5)
    model = VAE(latent_dim=2, hidden=(8,))
    seen = []
    model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    opt = make_optimizer(model, 1e-3)
    for _ in range(2):
        train_epoch(model, images, opt, batch_size=64, binarize=True, progress=False)
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    assert not torch.equal(seen[0], seen[1]), "a fresh sample each epoch"
    assert abs(seen[0].mean().item() - 0.5) < 0.02


def test_presets_set_defaults_that_explicit_settings_override():
    from digitgen.config import PipelineConfig

    q = PipelineConfig(preset="quality")
    assert (q.arch, q.binarize, q.is_samples, q.pixel_head) == ("conv", "dynamic", 1000, True)
    assert PipelineConfig(preset="quality", epochs=3).epochs == 3
    assert not PipelineConfig(preset="quality", pixel_head=False).pixel_head
    # an explicit MLP body or grey levels drop the preset's head (it needs both conv and binary pixels)
    assert PipelineConfig(preset="quality", arch="mlp").pixel_head is False
    assert PipelineConfig(preset="quality", binarize="none").pixel_head is False
    with pytest.raises(ValueError, match="--arch conv or --no-pixel-head"):
        PipelineConfig(arch="mlp", binarize="dynamic", pixel_head=True)
    with pytest.raises(ValueError, match="--binarize dynamic or --no-pixel-head"):
        PipelineConfig(arch="conv", pixel_head=True)
    assert PipelineConfig().arch == "mlp" and PipelineConfig().binarize == "none"


@pytest.mark.parametrize("kernel", [3, 5])
def test_pixel_head_is_causal_and_its_draws_match_its_likelihood(kernel):
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=(32,), body="conv", pixel_head=True, pixel_kernel=kernel).eval()
    with torch.no_grad():  # a head that actually uses its context
        model.head.context.weight.normal_(0, 1.0)
    z, x = torch.randn(2, 4), torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    base = model.decode(z, x)
    flipped = x.clone()
    flipped[:, :, 10, 5] = 1 - flipped[:, :, 10, 5]
    changed = (model.decode(z, flipped) - base).abs().flatten(1) > 1e-6  # [2, 784] in raster order
    first = 10 * 28 + 5
    assert not changed[:, : first + 1].any(), "a pixel's logit saw itself or a later pixel"
    assert changed[:, first + 1 :].any(), "later pixels ignore their context"
    # a draw's logits are exactly the likelihood's logits of the image it drew
    drawn, logits = model.head.sample(model.decoder(z))
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(logits, model.decode(z, drawn), atol=1e-5, rtol=1e-5)
    # the importance sampler's arrangement (many codes per image, context once) is the same likelihood
    many = torch.randn(3, 2, 4)
    expected = -torch.stack([bce_nats(model.decode(zs, x), x) for zs in many])
    torch.testing.assert_close(model.log_likelihood(many, x), expected, atol=1e-3, rtol=1e-5)


def test_resume_from_a_checkpoint_with_contiguous_adam_moments_matches_an_uninterrupted_run():
    """Checkpoints from before channels-last conv weights hold Adam's moments in the plain layout."""
    import copy

    images = torch.rand(300, 1, 28, 28)

    class Stop(Exception):
        pass

    def stop_after_first(record, state):
        states.append(copy.deepcopy(state))
        raise Stop

    def run(resume=None, on_epoch=None):
        torch.manual_seed(0)
        model = VAE(latent_dim=3, hidden=(16,), body="conv")
        return fit(
            model,
            images[:200],
            images[200:],
            epochs=2,
            batch_size=50,
            lr=1e-3,
            seed=1,
            progress=False,
            resume=resume,
            on_epoch=on_epoch,
        )

    whole, states = run(), []
    with pytest.raises(Stop):
        run(on_epoch=stop_after_first)
    old = states[0]
    moved = 0
    for moments in old["optimizer"]["state"].values():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.dim() == 4 and value.shape[1] > 1:
                moments[key], moved = value.contiguous(), moved + 1  # as an older checkpoint stored them
    assert moved
    assert run(resume=old) == whole


def test_kl_warmup_weights_the_kl_below_beta_only_while_it_lasts():
    torch.manual_seed(0)
    images = torch.rand(200, 1, 28, 28)
    model = VAE(latent_dim=3, hidden=(16,))
    opt = make_optimizer(model, lr=1e-3)
    warm = train_epoch(model, images, opt, batch_size=50, progress=False, first_step=0, warmup_steps=8)
    assert warm["loss"] < warm["recon"] + warm["kl"] - 1e-3
    done = train_epoch(model, images, opt, batch_size=50, progress=False, first_step=8, warmup_steps=8)
    assert done["loss"] == pytest.approx(done["recon"] + done["kl"], rel=1e-5)


def test_kl_warmup_always_leaves_the_last_epoch_on_the_elbo():
    torch.manual_seed(0)
    images = torch.rand(300, 1, 28, 28)
    history = fit(
        VAE(latent_dim=3, hidden=(16,)),
        images[:200],
        images[200:],
        epochs=1,
        batch_size=50,
        lr=1e-3,
        kl_warmup=5,
        progress=False,
    )
    assert history[0]["train_loss"] == pytest.approx(history[0]["train_recon"] + history[0]["train_kl"], rel=1e-5)


@pytest.mark.parametrize("fp32, bf16, expected", [(0.010, 0.018, None), (0.010, 0.004, torch.bfloat16)])
def test_auto_precision_follows_the_measured_step_times_not_the_cpu_flags(tmp_path, monkeypatch, fp32, bf16, expected):
    """`--precision auto` on a CPU times the model's own training step in float32 and bfloat16 and takes the faster,
    whatever the flags claim (here AMX and AVX512-BF16, which once meant bfloat16); the answer is cached per machine,
    model shape and batch size, so evaluation gets the same choice without measuring again."""
    import json

    import models.train as train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(train, "_cpuinfo", lambda: "model name : Some Xeon\nflags : fpu avx512f avx512_bf16 amx_bf16\n")
    calls = []

    def injected(model, batch_size, dtype):
        calls.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(train, "step_seconds", injected)
    model, cpu = VAE(8, (32,)), torch.device("cpu")
    assert train.autocast_dtype("auto", cpu, model, 64) == expected
    assert calls == [None, torch.bfloat16]
    assert train.autocast_dtype("auto", cpu, model, 64) == expected and len(calls) == 2, "cached: measured once"
    cached = json.loads((tmp_path / "digitgen" / "precision.json").read_text())
    (entry,) = cached.values()
    assert entry == {"fp32": fp32, "bf16": bf16, "choice": "fp32" if expected is None else "bf16"}
    assert train.precision_probe(model, 64)["cached"] is True
    train.autocast_dtype("auto", cpu, model, 128)  # another batch size (or shape): measured for itself
    assert len(calls) == 4
    assert train.autocast_dtype("fp32", cpu, model, 64) is None
    assert train.autocast_dtype("bf16", cpu, model, 64) == torch.bfloat16


def test_the_precision_probe_times_real_steps_and_leaves_the_random_state_alone(tmp_path, monkeypatch):
    import models.train as train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from models.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "vae.pt", {"arch": VAE(4, (16,)).arch(), "model": VAE(4, (16,)).state_dict()})
    model = load_checkpoint(tmp_path / "vae.pt")  # as evaluation probes it: a loaded, frozen model
    state = torch.get_rng_state()
    found = train.precision_probe(model, 8, timer=lambda m, b, d: train.step_seconds(m, b, d, seconds=0.01))
    assert found["choice"] in ("fp32", "bf16") and found["fp32"] > 0 and found["bf16"] > 0 and not found["cached"]
    assert torch.equal(state, torch.get_rng_state()), "a run's numbers do not depend on whether the probe ran"

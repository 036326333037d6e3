"""Generation: the ex-post samplers (per-class Gaussian mixtures on the codes), `digitgen generate`, and the
per-sampler scores in metrics.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import _refused_without_torch

from models.nets import VAE
from models.samplers import SamplerError, draw_codes, fit_class_mixtures

ROOT = Path(__file__).resolve().parents[1]


def _known_mixture(n_per_class: int, seed: int = 0):
    """Two classes in 3-D, each a 30/70 mixture of two well-separated Gaussians with its own covariance."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[[0.0, 0, 0], [6, 0, 0]], [[0, 6, 0], [0, 6, 6]]], dtype=torch.float64)
    scales = torch.tensor([[0.5, 1.0], [0.8, 0.3]], dtype=torch.float64)
    weights = torch.tensor([[0.3, 0.7], [0.7, 0.3]], dtype=torch.float64)
    codes, labels = [], []
    for c in range(2):
        comp = torch.multinomial(weights[c], n_per_class[c], replacement=True, generator=g)
        eps = torch.randn(n_per_class[c], 3, generator=g, dtype=torch.float64)
        codes.append(means[c, comp] + scales[c, comp, None] * eps)
        labels.append(torch.full((n_per_class[c],), c))
    return torch.cat(codes), torch.cat(labels), means, scales, weights


def test_fitted_mixtures_recover_a_known_mixture():
    codes, labels, means, scales, weights = _known_mixture([4000, 2000])
    fitted = fit_class_mixtures(codes, labels, n_classes=2, components=2)
    assert torch.allclose(fitted.class_share, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), atol=1e-6)
    for c in range(2):
        order = fitted.means[c, :, 0].argsort() if c == 0 else fitted.means[c, :, 2].argsort()
        assert torch.allclose(fitted.means[c, order], means[c], atol=0.1), fitted.means[c]
        assert torch.allclose(fitted.weights[c, order], weights[c], atol=0.03), fitted.weights[c]
        cov = fitted.scale_tril[c, order] @ fitted.scale_tril[c, order].transpose(1, 2)
        assert torch.allclose(cov, scales[c, :, None, None] ** 2 * torch.eye(3), atol=0.08), cov
    held_out, truth, *_ = _known_mixture([500, 500], seed=1)
    assert (fitted.class_posterior(held_out).argmax(1) == truth).double().mean() > 0.99
    # drawn codes follow the fitted density: the class shares of the data, and a chosen class on demand
    z, classes = fitted.sample(6000, torch.Generator().manual_seed(2))
    assert abs((classes == 0).double().mean().item() - 2 / 3) < 0.03
    assert abs(z[classes == 1, 2].mean().item() - 1.8) < 0.15  # 0.7 * 0 + 0.3 * 6
    z1, classes1 = fitted.sample(500, torch.Generator().manual_seed(3), cls=1)
    assert (classes1 == 1).all() and (fitted.class_posterior(z1).argmax(1) == 1).all()


def test_samplers_refuse_what_they_cannot_do():
    codes, labels, *_ = _known_mixture([300, 300])
    fitted = fit_class_mixtures(codes, labels, n_classes=2, components=2)
    g, model = torch.Generator().manual_seed(0), VAE(latent_dim=3)
    with pytest.raises(SamplerError, match="unknown sampler 'vamp'"):
        draw_codes("vamp", 4, model, g, fitted)
    with pytest.raises(SamplerError, match="knows no classes"):
        draw_codes("prior", 4, model, g, fitted, cls=1)
    with pytest.raises(SamplerError, match="no fitted mixtures"):
        draw_codes("gmm", 4, model, g, None)
    with pytest.raises(SamplerError, match="class 2 does not exist"):
        draw_codes("gmm", 4, model, g, fitted, cls=2)
    with pytest.raises(SamplerError, match="needs at least 2 per class"):
        fit_class_mixtures(codes[:5], labels[:5], n_classes=2, components=2)  # all of class 0
    assert fit_class_mixtures(codes[-7:], torch.tensor([0, 0, 0, 1, 1, 1, 1]), 2, components=5).means.shape[1] == 1


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory, judged_root):
    """A run trained enough to tell digits apart: 2 epochs on all 60,000 images, its samplers fitted. A 256-unit MLP
    with 8 latent dimensions is enough (its digits on demand: 99-100% judged as asked, against 70% for 64 units) and
    its run takes 24 s against 34 s for the default 512 units and 16 dimensions (one thread, one run each)."""
    from conftest import copy_root

    from flows.pipeline import digit_pipeline

    out = tmp_path_factory.mktemp("generate")
    root = copy_root(judged_root, out / "data")  # the suite's judged root is shared: runs write into their own
    run = digit_pipeline(
        epochs=2,
        hidden=[256],
        latent_dim=8,
        is_samples=10,
        quality_samples=2000,
        data_root=root,
        out=out,
        device="cpu",
        progress=False,
        run_name="two-epochs",
    )
    return Path(run)


def _generate(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "digitgen.cli", "generate", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def _judge(judged_root):
    from tasks.classifier import load_classifier

    return load_classifier(next((judged_root / "mnist").glob("judge-*-n60000-*.pt")))


def test_the_judge_is_saved_with_its_view_of_the_test_images(judged_root, mnist, tmp_path):
    """Every run compares its samples with the judge's class probabilities and features of the test images: saved
    with the judge, they are what the judge gives; a judge saved before they were gets them computed."""
    import torch

    from digitgen.data.loading import to_float
    from models.checkpoint import read_checkpoint, save_checkpoint
    from models.classifier import predict
    from tasks.classifier import load_judge

    path = next((judged_root / "mnist").glob("judge-*-n60000-*.pt"))
    judge, probs, feats = load_judge(path, mnist.test_images)
    assert feats.shape == (10_000, 128) and probs.shape == (10_000, 10)
    again = predict(judge, to_float(mnist.test_images))
    assert torch.allclose(probs, again[0], atol=1e-5) and torch.allclose(feats, again[1], atol=1e-4)
    older = tmp_path / "judge-old.pt"
    save_checkpoint(
        older, {k: v for k, v in read_checkpoint(path).items() if not k.startswith("test_") or k == "test_accuracy"}
    )
    _, old_probs, old_feats = load_judge(older, mnist.test_images)
    assert torch.allclose(old_probs, probs, atol=1e-5) and torch.allclose(old_feats, feats, atol=1e-4)


def test_metrics_score_every_sampler_and_the_mixture_makes_the_ae_a_generator(trained):
    from models.scores import GenerationScores, RunMetrics

    m = json.loads((trained / "metrics.json").read_text())
    typed = RunMetrics.read(trained / "metrics.json")
    vae, ae = GenerationScores.of(typed.vae), GenerationScores.of(typed.ae)
    assert set(vae.samplers) == set(ae.samplers) == {"prior", "gmm"}
    assert m["vae"]["samplers"]["prior"]["inception_score"] == m["vae"]["inception_score"]  # the keys of before
    for scores in (vae, ae):
        assert len(scores.samplers["gmm"].class_histogram) == 10
        assert abs(sum(scores.samplers["gmm"].class_histogram) - 1) < 1e-3
    # from N(0, I) the AE draws noise; from a density fitted to its codes it draws digits
    assert ae.samplers["gmm"].inception_score > ae.samplers["prior"].inception_score + 2
    assert ae.samplers["gmm"].frechet_distance < ae.samplers["prior"].frechet_distance / 3
    assert vae.samplers["gmm"].frechet_distance < vae.samplers["prior"].frechet_distance
    assert len(vae.on_demand.fidelity) == 10 and min(vae.on_demand.diversity) > 0.3
    report = (trained / "report.md").read_text()
    assert "## Samplers: where the codes come from" in report and "on_demand.png" in report


def test_generate_writes_a_grid_and_an_array(trained, tmp_path):
    """A PNG grid or an array, its path printed last; the CLI's --seed gives the images the same seed gives in
    another process (here), and another seed gives others."""
    from models.generate import generate

    done = _generate(trained, "--n", 20, "--seed", 3, "--out", tmp_path / "grid.png")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]) == (tmp_path / "grid.png").resolve()
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert _generate(trained, "--n", 20, "--seed", 3, "--out", tmp_path / "a.npy").returncode == 0
    a = np.load(tmp_path / "a.npy")
    b, c = (generate(trained, 20, seed=seed)[0][:, 0].numpy() for seed in (3, 4))
    assert a.shape == (20, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1 and a.max() > 0.5
    assert np.array_equal(a, b) and not np.array_equal(a, c), "same seed, same images; another seed, others"
    prior = _generate(trained, "--n", 8, "--sampler", "prior", "--model", "ae", "--out", tmp_path / "p.npy")
    assert prior.returncode == 0 and np.load(tmp_path / "p.npy").shape == (8, 28, 28)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left"


def test_generate_draws_the_digit_asked_for(trained, judged_root, tmp_path):
    """For every digit, the judge agrees with the class asked for, and the images vary; the CLI path once."""
    from models.classifier import predict
    from models.generate import generate

    judge = _judge(judged_root)
    share = []
    for digit in range(10):
        images, classes = generate(trained, 100, digit, seed=digit)
        assert (classes == digit).all()
        probs, feats = predict(judge, images)
        share.append((probs.argmax(1) == digit).double().mean().item())
        assert torch.pdist(feats).mean() > 1.0, "varied images, not copies of one"
    assert min(share) >= 0.85 and sum(share) / 10 >= 0.93, share
    done = _generate(trained, "--n", 100, "--digit", 7, "--seed", 7, "--out", tmp_path / "7.npy")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "7.npy"), generate(trained, 100, 7, seed=7)[0][:, 0].numpy())


def test_generate_from_the_champion(trained, tmp_path):
    done = _generate("champion", "--runs", trained.parent, "--n", 4, "--digit", 3, "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").is_file()


def test_generate_from_a_broken_champion_says_which_and_how_to_retire_it(trained, tmp_path):
    """The champion's registered vae.pt is damaged: one line naming the version and the command that retires it."""
    import shutil

    from digitgen.registry import tracking

    run = tmp_path / "broken"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("*.png", "*.npy", "*.md", "mlflow*"))
    (run / "vae.pt").write_bytes((run / "vae.pt").read_bytes()[:5000])
    store = tracking.Store.open(tmp_path, None)
    run_id = store.start_run("mnist", "broken", {}, {})
    store.log_files(run_id, [run / f for f in tracking.MODEL_FILES if (run / f).is_file()], "model")
    store.finish(run_id)
    store.register(
        "digitgen-mnist", run_id, {"digitgen.run_name": "broken", "digitgen.value": "90.0", "digitgen.evaluation": "{}"}
    )
    done = _generate("champion", "--runs", tmp_path, "--n", 4, "--out", tmp_path / "c.png")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "the champion, digitgen-mnist version 1 (run broken), cannot generate" in done.stderr, done.stderr
    assert "digitgen retire --dataset mnist" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digit", "12"], "--digit 12: MNIST has classes 0 to 9"),
        (["--sampler", "vamp"], "unknown sampler 'vamp'"),
        (["--sampler", "prior", "--digit", "3"], "knows no classes"),
        (["--n", "0"], "--n must be between"),
        (["--out", "grid.jpg"], "must end in .png"),
    ],
)
def test_generate_refuses_bad_requests_clearly(trained, tmp_path, args, message):
    """Refused in one line, at once: before torch (over a second of imports) is loaded."""
    args = [a if a != "grid.jpg" else tmp_path / a for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "x.png"]
    done = _refused_without_torch("generate", trained, *args, *out)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.iterdir()), "nothing written"


def test_an_unwritable_out_is_refused_before_any_image_is_generated(trained, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    done = _generate(trained, "--n", 4, "--out", afile / "x.png")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert (
        done.stderr.strip() == f"digitgen generate: --out {afile / 'x.png'}: cannot write there ({afile} is a file, "
        "not a folder); choose another --out"
    )


INTERRUPTED = """
import os, signal, sys
import models.latent
from digitgen.cli import main

real = models.latent.decode_images

def interrupted(*args, **kwargs):  # the signal arrives while the images are being decoded
    os.kill(os.getpid(), int(sys.argv[1]))
    return real(*args, **kwargs)

models.latent.decode_images = interrupted
if sys.argv[2] == "ignoring":  # started as a shell starts a command in the background: SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN)
main(sys.argv[3:])
status = open("/proc/self/status").read().splitlines()
print("not interrupted:", *[line for line in status if line.startswith(("SigBlk", "SigIgn"))], file=sys.stderr)
"""


@pytest.mark.parametrize(
    "signum, started", [(signal.SIGTERM, "plainly"), (signal.SIGINT, "plainly"), (signal.SIGINT, "ignoring")]
)
def test_an_interrupted_generate_says_so_in_one_line_and_leaves_no_file(trained, tmp_path, signum, started):
    """Stopped while it decodes: one line, the signal's exit code, and neither the file nor a temporary one; also
    when it was started ignoring SIGINT, as `digitgen run` is stopped then too."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            INTERRUPTED,
            str(int(signum)),
            started,
            "generate",
            str(trained),
            "--n",
            "1000",
            "--out",
            str(tmp_path / "many.npy"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 128 + signum, done.stderr
    assert (
        done.stderr.strip() == f"digitgen generate: interrupted ({signum.name}); nothing was written "
        f"({tmp_path / 'many.npy'} is as it was)"
    ), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_names_a_missing_run_and_a_missing_champion(tmp_path):
    done = _generate(tmp_path / "no-such-run", "--out", tmp_path / "x.png")
    assert done.returncode == 1 and "is not a run folder" in done.stderr
    done = _generate("champion", "--runs", tmp_path, "--out", tmp_path / "x.png")
    assert done.returncode == 1 and "no MNIST champion yet" in done.stderr
    assert not (tmp_path / "x.png").exists()

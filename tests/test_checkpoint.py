import pickle

import pytest
import torch

from models import AE, VAE, CheckpointError, load_checkpoint
from models.checkpoint import save_checkpoint


def _save(model, path):
    save_checkpoint(path, {"arch": model.arch(), "model": model.state_dict(), "epoch": 1})


@pytest.mark.parametrize("cls", [VAE, AE])
def test_round_trip_in_eval_mode(tmp_path, cls):
    model = cls(latent_dim=4, hidden=(16,))
    _save(model, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is cls and not loaded.training
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.decode(torch.ones(3, 4)), model.eval().decode(torch.ones(3, 4)))
    assert loaded.encode(x)[0].shape == (3, 4) if cls is VAE else loaded.encode(x).shape == (3, 4)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    _save(VAE(4, (16,)), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "m.pt")


def test_other_architecture(tmp_path):
    model = VAE(4, (16,))
    state = {"arch": {"kind": "vae", "latent_dim": 8, "hidden": [16]}, "model": model.state_dict()}
    save_checkpoint(tmp_path / "m.pt", state)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "m.pt")


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_crafted_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    torch.save(
        {"arch": {"kind": "vae", "latent_dim": 4, "hidden": [16]}, "model": exploit},
        tmp_path / "evil.pt",
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_judge_saved_before_the_pooling_moved_judges_as_it_did(tmp_path):
    """The judge's ReLUs come after its max-pools (the same function, a training step 1.4x faster): a judge file
    saved with the ReLUs first, reused by name for its data, gives the same classes and features, bit for bit."""
    from torch import nn

    from models.classifier import ImageClassifier, predict
    from tasks.classifier import load_classifier

    torch.manual_seed(0)
    before = ImageClassifier()
    c1, _, _, c2, _, _, flat, fc, _ = before.body
    before.body = nn.Sequential(c1, nn.ReLU(), nn.MaxPool2d(2), c2, nn.ReLU(), nn.MaxPool2d(2), flat, fc, nn.ReLU())
    save_checkpoint(tmp_path / "judge.pt", {"arch": before.arch(), "model": before.state_dict()})
    x = torch.randn(300, 1, 28, 28)  # negative values too: where the order of ReLU and pooling could matter
    for now, then in zip(predict(load_classifier(tmp_path / "judge.pt"), x), predict(before.eval(), x), strict=True):
        assert torch.equal(now, then)

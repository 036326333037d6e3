"""pytorch/examples `vae/main.py`, as written there: the yardstick the benchmark runs beside ours.

MLP 784-400-20, sigmoid outputs with F.binary_cross_entropy, Adam 1e-3, batch 128, and a per-item
`transforms.ToTensor()` DataLoader. Only the printing is gone and the epoch loop reports its times.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets, transforms


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def run(root: str, target: float, max_epochs: int = 14, seed: int = 1) -> dict:
    """Train until the test loss reaches `target` (or `max_epochs`); per-epoch wall times and losses."""
    torch.manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, transform=transforms.ToTensor()), batch_size=128, shuffle=True
    )
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=False, transform=transforms.ToTensor()), batch_size=128, shuffle=False
    )
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs, train_seconds, start = [], 0.0, time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        t = time.perf_counter()
        for data, _ in train_loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            optimizer.step()
        train_seconds += time.perf_counter() - t
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                recon, mu, logvar = model(data)
                test_loss += loss_function(recon, data, mu, logvar).item()
        test_loss /= len(test_loader.dataset)
        epochs.append({"epoch": epoch, "test_loss": test_loss, "wall": time.perf_counter() - start})
        if test_loss <= target:
            break
    images = len(train_loader.dataset) * len(epochs)
    return {"epochs": epochs, "train_seconds": train_seconds, "images_per_s": images / train_seconds}

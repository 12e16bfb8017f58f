"""The ICM loss trains a real model: a small CNN on a Fashion-MNIST subset, through the public API only."""
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from timm_icm import InfiniteClassCrossEntropy, InfiniteClassMixup
from timm_icm.datasets import create_dataset, dataset_targets
from timm_icm.subsets import samples_per_class

README = Path(__file__).resolve().parents[1] / 'README.md'


def tensors(data_dir, split, per_class, seed):
    dataset = create_dataset('torch/fashion_mnist', root=data_dir, split=split)
    index = samples_per_class(dataset_targets(dataset), per_class, seed=seed)
    images = torch.stack([torch.from_numpy(np.asarray(dataset[i][0], dtype=np.float32)) for i in index.tolist()])
    return ((images / 255. - 0.286) / 0.353)[:, None], dataset_targets(dataset)[index]


def test_icm_loss_learns_fashion_mnist(fashion_mnist_dir):
    torch.manual_seed(0)
    np.random.seed(0)
    x_train, y_train = tensors(fashion_mnist_dir, 'train', 200, seed=0)
    x_test, y_test = tensors(fashion_mnist_dir, 'test', 50, seed=0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    mixer = InfiniteClassMixup(mixup_alpha=0.2, num_classes=10, label_smoothing=0.)
    loss_fn = InfiniteClassCrossEntropy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(6):
        model.train()
        for batch in torch.randperm(len(x_train)).split(64):
            if len(batch) % 2:
                continue
            x, y = mixer(x_train[batch].clone(), y_train[batch])
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    # chance: 0.10. Measured: 0.850 (seed 0, the same twice), 0.834, 0.804, 0.834 (seeds 1, 2, 3)
    assert accuracy > 0.75, accuracy


def test_readme_snippet_runs_as_written(fashion_mnist_dir):
    text = README.read_text()
    snippet = re.search(r'```python\n(.*?)```', text, re.S).group(1)
    assert 'InfiniteClassMixup' in snippet and 'InfiniteClassCrossEntropy' in snippet
    torch.manual_seed(0)  # the model's initial weights and the loader's order
    np.random.seed(0)  # the mixer's lambdas
    namespace = {}
    exec(compile(snippet, str(README), 'exec'), namespace)
    losses = namespace['losses']
    assert len(losses) > 20
    # The mean of the last 5 steps' losses is 0.70-0.71 of the first 5's (seeds 0, 1, 2: 8.2-8.4 -> 5.8-6.0);
    # without optimizer.step() it is 0.995-1.016.
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)

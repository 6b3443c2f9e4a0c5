"""Frozen vs fine-tuned backbone for the default model, judged on validation.

The default model is a frozen EfficientNet-Lite0 (192 px) with a ridge head on the mean+std pooled
maps of every stage. This script asks whether fine-tuning the deep end of the backbone on SAVOIAS
does better. To make that affordable on a 2-core CPU, the frozen front (stem and stages before
``--first-trainable``) runs once per image and its output map is cached; only the later stages, the
1x1 head and the linear readout are trained, with horizontal flips of the cached map as augmentation.

Per split the network starts *at* the frozen model: the readout is initialised with the ridge
solution (penalty chosen on validation), so epoch 0 is the frozen baseline and training can only be
credited with what it adds. BatchNorm statistics stay frozen (batches of 32 would make them noisy).
The epoch is chosen by validation category-mean SRCC; the test part is scored at that epoch only.

    python -m benchmarks.finetune_exploration --splits 3 --epochs 15

Writes ``benchmarks/results/finetune_exploration.csv`` (one row per split and the mean).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, default_savoias_root, machine_description
from benchmarks.default_model_selection import category_mean

from pyica.data import load_dataset
from pyica.data.splits import repeated_random_splits
from pyica.loading import load_image
from pyica.metrics import plcc, srcc
from pyica.models.effnet import SquareResize, StageFeatures, load_backbone, mean_std_pool, normalize_tf
from pyica.models.ridge import ridge_path, select_alpha
from pyica.reports import format_table, write_results_csv
from pyica.progress import progress_bar


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="lite0", help="EfficientNet-Lite variant (default lite0, the default model's)")
    p.add_argument("--size", type=int, default=192, help="square input size (default 192, the default model's)")
    p.add_argument("--first-trainable", type=int, default=6,
                   help="first fine-tuned stage, 1..7 (default 6: stages 6, 7 and the head are trained)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per split")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the backbone stages")
    p.add_argument("--head-lr", type=float, default=1e-4, help="Adam learning rate of the linear readout")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="Adam (decoupled) weight decay")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--root", type=Path, default=default_savoias_root(), help="SAVOIAS folder")
    p.add_argument("--splits", type=int, default=3, help="how many of the protocol's 10 splits to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the first split and of training")
    p.add_argument("--out", type=Path, default=RESULTS / "finetune_exploration.csv", help="results CSV")
    return p.parse_args(argv)


class DeepEnd(torch.nn.Module):
    """Stages ``first..7`` and the head of a StageFeatures trunk, fed the cached map before ``first``."""

    def __init__(self, trunk: StageFeatures, first: int):
        super().__init__()
        start = 0 if first == 1 else trunk.stage_ends[first - 2] + 1
        self.offset, self.total = start, len(trunk.blocks)
        self.blocks = torch.nn.ModuleList(trunk.blocks[start:])
        self.ends = {i - start for i in trunk.stage_ends if i >= start}
        self.head = trunk.head
        self.drop_connect_rate = trunk.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = []
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * (i + self.offset) / self.total if self.training else None
            x = block(x, drop_connect_rate=rate)
            if i in self.ends:
                maps.append(x)
        maps.append(self.head(x))
        return mean_std_pool(maps)


@torch.no_grad()
def cache_front(trunk: StageFeatures, paths, size: int, first: int) -> tuple[np.ndarray, torch.Tensor]:
    """Pooled features of the frozen stages and the map entering stage ``first``, for every image."""
    resize, pooled, maps = SquareResize(size), [], []
    bar = progress_bar(len(paths), enabled=True)
    for path in paths:
        bar.update(1)
        x = normalize_tf(resize(load_image(path)).unsqueeze(0))
        x = trunk.stem(x)
        stage_maps = []
        for i, block in enumerate(trunk.blocks):
            if len(stage_maps) == first - 1:
                break
            x = block(x)
            if i in trunk.stage_ends:
                stage_maps.append(x)
        pooled.append(mean_std_pool(stage_maps).numpy() if stage_maps else np.zeros((1, 0), np.float32))
        maps.append(x)
    bar.close()
    return np.concatenate(pooled), torch.cat(maps)


def run_split(split, front_pooled, front_maps, trunk, ds, args) -> dict:
    y, cats = ds.scores / 100.0, ds.categories
    torch.manual_seed(args.seed)
    deep = DeepEnd(copy.deepcopy(trunk), args.first_trainable)
    deep.eval()
    with torch.no_grad():
        deep_pooled = torch.cat([deep(front_maps[i:i + 64]) for i in range(0, len(front_maps), 64)]).numpy()
    x = np.hstack([front_pooled, deep_pooled]).astype(np.float64)
    alpha, _ = select_alpha(x[split.train], y[split.train], x[split.val], y[split.val], cats[split.val])
    ridge = ridge_path(x[split.train], y[split.train], [alpha])[0]

    # the readout works on standardised features, as the ridge head does; initialise it with the ridge fit
    mean = torch.tensor(ridge.mean, dtype=torch.float32)
    std = torch.tensor(ridge.std, dtype=torch.float32)
    readout = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        readout.weight.copy_(torch.tensor(ridge.weight, dtype=torch.float32).reshape(1, -1))
        readout.bias.fill_(float(ridge.bias))
    fp = torch.tensor(front_pooled, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32)

    def predict(index: np.ndarray) -> np.ndarray:
        deep.eval()
        with torch.no_grad():
            out = [readout((torch.cat([fp[b], deep(front_maps[b])], 1) - mean) / std).squeeze(1)
                   for b in np.array_split(index, max(1, len(index) // 64))]
        return torch.cat(out).numpy()

    def val_score() -> float:
        return category_mean(predict(split.val), y[split.val], cats[split.val], srcc)

    optimiser = torch.optim.AdamW([{"params": deep.parameters(), "lr": args.lr},
                                   {"params": readout.parameters(), "lr": args.head_lr}],
                                  weight_decay=args.weight_decay)
    history = [val_score()]
    best = (history[0], 0, copy.deepcopy(deep.state_dict()), copy.deepcopy(readout.state_dict()))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        deep.train()
        for m in deep.modules():  # frozen BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        order = rng.permutation(split.train)
        for b in np.array_split(order, max(1, len(order) // args.batch_size)):
            maps = front_maps[b]
            flip = torch.from_numpy(rng.random(len(b)) < 0.5)
            maps = torch.where(flip[:, None, None, None], maps.flip(3), maps)
            pred = readout((torch.cat([fp[b], deep(maps)], 1) - mean) / std).squeeze(1)
            loss = torch.nn.functional.mse_loss(pred, targets[b])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        history.append(val_score())
        print(f"  epoch {epoch:2d}: val category-mean SRCC {history[-1]:.4f}", flush=True)
        if history[-1] > best[0]:
            best = (history[-1], epoch, copy.deepcopy(deep.state_dict()), copy.deepcopy(readout.state_dict()))
    seconds_per_epoch = (time.perf_counter() - t0) / max(1, args.epochs)
    frozen_test = ridge.predict(x[split.test])
    deep.load_state_dict(best[2])
    readout.load_state_dict(best[3])
    tuned_test = predict(split.test)
    t, c = y[split.test], cats[split.test]
    return {"split": split.name, "frozen_val_cat_srcc": round(history[0], 4), "tuned_val_cat_srcc": round(best[0], 4),
            "best_epoch": best[1], "frozen_test_cat_srcc": round(category_mean(frozen_test, t, c, srcc), 4),
            "tuned_test_cat_srcc": round(category_mean(tuned_test, t, c, srcc), 4),
            "frozen_test_pooled_srcc": round(srcc(frozen_test, t), 4),
            "tuned_test_pooled_srcc": round(srcc(tuned_test, t), 4),
            "tuned_test_pooled_plcc": round(plcc(tuned_test, t), 4),
            "seconds_per_epoch": round(seconds_per_epoch, 1)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 1 <= args.first_trainable <= 7:
        raise SystemExit("--first-trainable must be between 1 and 7")
    torch.manual_seed(args.seed)
    ds = load_dataset("savoias", root=args.root)
    splits = repeated_random_splits(ds, n_splits=10, seed=args.seed, test_fraction=0.2, val_fraction=0.1)
    splits = splits[:args.splits]
    print(f"SAVOIAS: {len(ds)} images; {len(splits)} splits; machine: {machine_description()}", flush=True)
    trunk = StageFeatures(load_backbone(args.variant)).eval()
    front_pooled, front_maps = cache_front(trunk, ds.full_paths(), args.size, args.first_trainable)
    rows = []
    for split in splits:
        print(f"split {split.name}", flush=True)
        rows.append(run_split(split, front_pooled, front_maps, trunk, ds, args))
        print(format_table([rows[-1]]), flush=True)
    mean_row = {"split": "mean"}
    for key in rows[0]:
        if key != "split":
            mean_row[key] = round(float(np.mean([r[key] for r in rows])), 4)
    rows.append(mean_row)
    setting = {"variant": args.variant, "size": args.size, "first_trainable": args.first_trainable,
               "epochs": args.epochs, "lr": args.lr, "head_lr": args.head_lr}
    rows = [{**setting, **r} for r in rows]
    print("\n" + format_table(rows))
    write_results_csv(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Ridge vs MLP head on the default model's frozen features, judged on validation.

The default model's features (EfficientNet-Lite0 at 192 px, mean+std of every stage and the head,
4,128 values) get either the shipped closed-form ridge head or a one-hidden-layer MLP (standardised
inputs, ReLU, dropout, AdamW, MSE; weight decay and hidden width chosen per split on the validation
part, epoch by early stopping on validation). Both are then scored on each split's test part. The
protocol is the benchmark's: 10 seeded random 8:2 splits, 10% of training held out for validation.

    python -m benchmarks.head_exploration --splits 10

Writes ``benchmarks/results/head_exploration.csv``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, default_savoias_root, machine_description
from benchmarks.default_model_selection import category_mean, view_features

from pyica.data import load_dataset
from pyica.data.splits import repeated_random_splits
from pyica.metrics import plcc, srcc
from pyica.models.ridge import ridge_path, select_alpha
from pyica.reports import format_table, write_results_csv

WIDTHS = (128, 512)
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--view", default="lite0:square:192", help="features 'variant:resize:size' (default: the default model's)")
    p.add_argument("--root", type=Path, default=default_savoias_root(), help="SAVOIAS folder")
    p.add_argument("--splits", type=int, default=10, help="random 8:2 splits (default 10)")
    p.add_argument("--epochs", type=int, default=200, help="maximum MLP epochs (early stopping on validation)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for feature extraction")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-features"), help="feature cache folder")
    p.add_argument("--out", type=Path, default=RESULTS / "head_exploration.csv", help="results CSV")
    return p.parse_args(argv)


def train_mlp(x_tr, y_tr, x_val, y_val, c_val, width, weight_decay, epochs, seed=0):
    """Returns (best validation category-mean SRCC, predict function at the best epoch)."""
    torch.manual_seed(seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8
    xt = torch.tensor((x_tr - mean) / std, dtype=torch.float32)
    xv = torch.tensor((x_val - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y_tr, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(xt.shape[1], width), torch.nn.ReLU(),
                              torch.nn.Dropout(0.2), torch.nn.Linear(width, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, stale = -np.inf, None, 0
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = torch.nn.functional.mse_loss(net(xt[idx]).squeeze(1), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            score = category_mean(net(xv).squeeze(1).numpy(), y_val, c_val, srcc)
        if score > best:
            best, best_state, stale = score, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= 20:
                break
    net.load_state_dict(best_state)

    def predict(x):
        with torch.no_grad():
            return net(torch.tensor((x - mean) / std, dtype=torch.float32)).squeeze(1).numpy()

    return best, predict


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = load_dataset("savoias", root=args.root)
    splits = repeated_random_splits(ds, n_splits=args.splits, seed=0, test_fraction=0.2, val_fraction=0.1)
    print(f"SAVOIAS: {len(ds)} images, {len(splits)} splits; machine: {machine_description()}", flush=True)
    x, _ = view_features(args.view, ds, args)
    x = x.astype(np.float64)
    y, cats = ds.scores / 100.0, ds.categories
    rows = []
    for split in splits:
        tr, va, te = split.train, split.val, split.test
        t, c = y[te], cats[te]
        alpha, ridge_val = select_alpha(x[tr], y[tr], x[va], y[va], cats[va])
        ridge = ridge_path(np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]]), [alpha])[0]
        ridge_pred = ridge.predict(x[te])
        found = [(train_mlp(x[tr], y[tr], x[va], y[va], cats[va], w, wd, args.epochs), w, wd)
                 for w, wd in itertools.product(WIDTHS, WEIGHT_DECAYS)]
        (mlp_val, predict), width, wd = max(found, key=lambda f: f[0][0])
        mlp_pred = predict(x[te])
        rows.append({"split": split.name, "ridge_val_cat_srcc": round(max(ridge_val), 4),
                     "mlp_val_cat_srcc": round(mlp_val, 4), "mlp_width": width, "mlp_weight_decay": wd,
                     "ridge_test_cat_srcc": round(category_mean(ridge_pred, t, c, srcc), 4),
                     "mlp_test_cat_srcc": round(category_mean(mlp_pred, t, c, srcc), 4),
                     "ridge_test_pooled_srcc": round(srcc(ridge_pred, t), 4),
                     "mlp_test_pooled_srcc": round(srcc(mlp_pred, t), 4),
                     "ridge_test_pooled_plcc": round(plcc(ridge_pred, t), 4),
                     "mlp_test_pooled_plcc": round(plcc(mlp_pred, t), 4)})
        print(format_table([rows[-1]]), flush=True)
    numeric = [k for k in rows[0] if k not in ("split",)]
    rows.append({"split": "mean", **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in numeric}})
    rows = [{"view": args.view, **r} for r in rows]
    print("\n" + format_table(rows))
    write_results_csv(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

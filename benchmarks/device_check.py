"""GPU acceptance checks for a lent GPU machine, in under 5 minutes: one PASS/FAIL/SKIP line per check (issue 25).

Checks (CUDA ones say ``SKIP (no CUDA)`` without a GPU; a CPU smoke version of each then runs instead,
so that the script itself is tested on any machine):

* ``score_cuda_vs_cpu``: the default model scores the example images on CUDA and on CPU; the max
  |difference| must be <= 1e-3 (``--tolerance``);
* ``score_bf16``: the same on CUDA under bf16 autocast against CPU fp32 (<= ``--bf16-tolerance``, 0.05);
* ``icnet_epoch``: one short epoch of the ICNet trainer (tiny net, 12 synthetic images, bf16 AMP on CUDA);
* ``cmssa_epoch``: one short epoch of offline CM-SSA (tiny MiniLM, 16 synthetic images; SKIP without
  the ``pyica[cmssa]`` extra);
* ``pretrain_amp``: a few CLICv2 pretraining steps (tiny ViT, 32-px crops, ``amp: true``);
* ``pretrain_torchrun``: the same steps as ``torchrun --nproc_per_node 1 -m pyica pretrain`` (NCCL on CUDA;
  gloo in the CPU smoke version), a subprocess;
* ``train_verify``: ``pyica train effnet_lite0_within.savoias --verify`` on CUDA when SAVOIAS is at
  ``--savoias`` (default ``../shared/data/savoias`` or ``$PYICA_SAVOIAS``): the shipped head (fitted on
  a CPU) refitted on the GPU, under the cross-device tolerance; then a head fitted on the GPU (no
  evaluation) and refitted there, under the config's tolerance. Reports the cross-device max score
  difference (the figure pyica.training.fit_head.CROSS_DEVICE_TOLERANCE allows for, unmeasured so far)
  and the same-GPU one. SKIP without CUDA (too slow on CPU) or without the data.

The number on each line is the check's measured value (a max difference, a loss, or seconds). Every
check is isolated: an exception is a FAIL of that check and the next one runs. The log (every line and
each failure's traceback) goes to ``benchmarks/results/device_check.log``. Exit code 0 when no check FAILed.
Nothing large is needed: the toy data are generated in a temp folder (the device tool carries 64 MiB).

    python -m benchmarks.device_check                  # on the GPU machine
    python -m benchmarks.device_check --only score_cuda_vs_cpu pretrain_torchrun
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import REPO, RESULTS, default_savoias_root, machine_description

LOG = RESULTS / "device_check.log"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


class Skip(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


def _examples() -> list[Path]:
    return sorted((REPO / "examples" / "images").glob("*.jpg"))


def _scores(model, precision="fp32") -> np.ndarray:
    from pyica.scoring import score_paths

    records = list(score_paths([str(p) for p in _examples()], model, batch_size=16, num_workers=0, precision=precision))
    bad = [r.error for r in records if r.error]
    if bad:
        raise RuntimeError(bad[0])
    return np.array([r.score for r in records])


_CPU_SCORES: dict = {}


def _cpu_reference() -> np.ndarray:
    from pyica.registry import DEFAULT_MODEL, create_model

    if "fp32" not in _CPU_SCORES:
        _CPU_SCORES["fp32"] = _scores(create_model(DEFAULT_MODEL, device="cpu"))
    return _CPU_SCORES["fp32"]


def check_score_cuda_vs_cpu(args, tmp: Path):
    from pyica.registry import DEFAULT_MODEL, create_model

    if not CUDA:  # smoke: CPU against CPU (same code path, must agree exactly up to float noise)
        diff = float(np.abs(_scores(create_model(DEFAULT_MODEL, device="cpu")) - _cpu_reference()).max())
        return diff <= args.tolerance, diff, "CPU smoke: CPU vs CPU"
    diff = float(np.abs(_scores(create_model(DEFAULT_MODEL, device="cuda")) - _cpu_reference()).max())
    return diff <= args.tolerance, diff, f"max |cuda fp32 - cpu fp32| over {len(_examples())} images (<= {args.tolerance})"


def check_score_bf16(args, tmp: Path):
    from pyica.registry import DEFAULT_MODEL, create_model

    model = create_model(DEFAULT_MODEL, device=DEVICE)
    diff = float(np.abs(_scores(model, "bf16") - _cpu_reference()).max())
    where = "cuda" if CUDA else "CPU smoke: cpu"
    return diff <= args.bf16_tolerance, diff, f"max |{where} bf16 - cpu fp32| (<= {args.bf16_tolerance})"


def _rect_image(k: int, seed: int, size=64) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), rng.integers(60, 200), np.uint8)
    for _ in range(k):
        rw, rh = rng.integers(4, 14, 2)
        x, y = rng.integers(0, size - 14), rng.integers(0, size - 14)
        a[y:y + rh, x:x + rw] = rng.integers(0, 256, 3)
    return Image.fromarray(a)


def _toy_dataset(root: Path, n: int, size: int = 64):
    from pyica.data.dataset import ComplexityDataset

    root.mkdir(parents=True, exist_ok=True)
    paths, scores = [], []
    for i in range(n):
        k = i % 6
        _rect_image(3 * k, i, size).save(root / f"img{i:02d}.png")
        paths.append(f"img{i:02d}.png")
        scores.append(float(k))
    return ComplexityDataset("toy", root, np.array(paths), np.array(scores), np.array(["ab"[i % 2] for i in range(n)]),
                             np.array([]), score_scale=(0.0, 5.0))


def check_icnet_epoch(args, tmp: Path):
    from pyica.models.icnet import ICNet, ICNetConfig, ICNetModel
    from pyica.training.train_icnet import ICNetRecipe, ICNetTrainer

    ds = _toy_dataset(tmp / "icnet", 12)
    tiny = dict(input_size=64, width=8, fuse_channels=8, slam_hidden=16, score_hidden=16)
    recipe = ICNetRecipe(epochs=1, batch_size=4, lr=0.01, device=DEVICE, num_workers=0, amp=CUDA)
    trainer = ICNetTrainer(lambda: ICNetModel(ICNet(ICNetConfig(**tiny))), recipe)
    result = trainer.fit_dataset(ds.subset(np.arange(8)), ds.subset(np.arange(8, 12)))
    loss = float(result["history"][-1]["loss"])
    on = next(trainer.model.net.parameters()).device.type
    return np.isfinite(loss) and on == DEVICE, loss, f"loss after 1 epoch on {on}{' (bf16 AMP)' if CUDA else ''}"


def check_cmssa_epoch(args, tmp: Path):
    try:
        import transformers

        from pyica.models.cmssa_offline import EffNetMiniLMEncoders, minilm_path
        path = minilm_path()
    except ImportError as err:
        raise Skip(f"CM-SSA extra not installed ({err})") from None
    from pyica.models.cmssa import CMSSA, CMSSAConfig
    from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    bert_config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=80)
    ds = _toy_dataset(tmp / "cmssa", 16, size=96)
    captions = {p: f"an image with {i % 6} things" for i, p in enumerate(ds.full_paths())}
    config = CMSSAConfig(n_ctx=4, depth=2, patch_size=64, patch_stride=64, max_patches=1, eval_short_side=64,
                         readout="expectation")
    recipe = TrainRecipe(epochs=1, batch_size=8, lr=1e-2, train_short_side=64, train_crops=1, num_workers=0,
                         patience=None, device=DEVICE, amp=CUDA)

    def build():
        bert = transformers.BertModel(bert_config, add_pooling_layer=False).eval()
        return CMSSA(EffNetMiniLMEncoders(bert, tokenizer, image_variant="lite0", embed_dim=16, pretrained=False), config)

    trainer = CMSSATrainer(build, recipe, captions=captions)
    trainer.fit_dataset(ds)
    loss = float(trainer.history[-1]["complexity"])
    return np.isfinite(loss), loss, f"complexity loss after 1 epoch on {DEVICE}"


def _pretrain_config(tmp: Path, name: str) -> dict:
    folder = tmp / f"{name}-images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        _rect_image(2 + i % 6, i, 48).save(folder / f"p{i:02d}.png")
    model = dict(arch="vit_tiny", patch_size=8, image_size=32, encoder_overrides={"dim": 32, "depth": 2, "heads": 2},
                 proj_hidden=32, proj_dim=16, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    return {"method": "clicv2", "model": model, "data": {"sources": [str(folder)], "image_size": 32},
            "optim": {"lr": 1e-3, "base_batch": 4, "batch_size": 4, "epochs": 2, "warmup_epochs": 1},
            "seed": 0, "amp": True, "checkpoint_every": 2, "log_every": 1, "output_dir": str(tmp / f"{name}-out")}


def _pretrain_last_step(out: Path) -> tuple[int, float]:
    """The last step row of the pretraining log (pyica.training.pretrain.LOG): (step, loss)."""
    from pyica.training.pretrain import LOG as PRETRAIN_LOG

    rows = [json.loads(line) for line in (out / PRETRAIN_LOG).read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "step"]
    return (int(steps[-1]["step"]), float(steps[-1]["loss"])) if steps else (0, float("nan"))


def check_pretrain_amp(args, tmp: Path):
    from pyica.training import pretrain as pt

    cfg = _pretrain_config(tmp, "amp")
    pt.pretrain(cfg, max_steps=args.steps, device=DEVICE, num_workers=0, progress=False)
    steps, loss = _pretrain_last_step(Path(cfg["output_dir"]))
    return bool(np.isfinite(loss)) and steps == args.steps, loss, f"loss at step {steps} on {DEVICE} (amp: bf16 on CUDA)"


def check_pretrain_torchrun(args, tmp: Path):
    cfg = _pretrain_config(tmp, "torchrun")
    path = tmp / "torchrun.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "--module", "pyica",
           "pretrain", str(path), "--max-steps", str(args.steps), "--device", DEVICE, "--workers", "0", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.perf_counter() - t0
    backend = "NCCL" if CUDA else "gloo (CPU smoke)"
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
    steps, loss = _pretrain_last_step(Path(cfg["output_dir"]))
    ok = steps == args.steps and bool(np.isfinite(loss))
    return ok, loss, f"loss at step {steps}, {backend}, {seconds:.1f} s with start-up"


def check_train_verify(args, tmp: Path):
    if not CUDA:
        raise Skip("no CUDA (a CPU refit of SAVOIAS is too slow for a smoke test)")
    if not args.savoias.is_dir():
        raise Skip(f"no SAVOIAS at {args.savoias}")
    from pyica.training.trainers import TrainOptions, train_config

    name, root = "effnet_lite0_within.savoias", str(args.savoias)
    # the shipped head, fitted on a CPU: the cross-device case
    cross = train_config(name, TrainOptions(root=root, verify=True, device="cuda", progress=False))
    # a head fitted on this GPU and refitted there: the same-device case
    fitted = tmp / "fitted_on_cuda"
    train_config(name, TrainOptions(root=root, output_dir=str(fitted), evaluate=False, device="cuda", progress=False))
    same = train_config(name, TrainOptions(root=root, output_dir=str(fitted), verify=True, device="cuda",
                                           progress=False))
    ok = bool(cross["reproduced"]) and bool(same["reproduced"]) and bool(same["same_device"])
    return ok, float(cross["max_score_difference"]), (
        f"max score difference, {cross['device']} refit of the shipped {cross['card_fit_device']}-fitted head over "
        f"{cross['images']} images (<= {cross['tolerance']}); same-GPU refit {same['max_score_difference']:.3g} "
        f"(<= {same['tolerance']})")


CHECKS = {"score_cuda_vs_cpu": check_score_cuda_vs_cpu, "score_bf16": check_score_bf16,
          "icnet_epoch": check_icnet_epoch, "cmssa_epoch": check_cmssa_epoch, "pretrain_amp": check_pretrain_amp,
          "pretrain_torchrun": check_pretrain_torchrun, "train_verify": check_train_verify}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks (default: all)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="CUDA fp32 vs CPU fp32 score tolerance (default 1e-3)")
    p.add_argument("--bf16-tolerance", type=float, default=0.05, help="bf16 vs CPU fp32 score tolerance (default 0.05)")
    p.add_argument("--steps", type=int, default=3, help="pretraining steps of the two pretrain checks (default 3)")
    p.add_argument("--savoias", type=Path, default=default_savoias_root(), help="SAVOIAS root for train_verify")
    p.add_argument("--log", type=Path, default=LOG, help=f"log file (default: {LOG.relative_to(REPO)})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"device_check: {'CUDA' if CUDA else 'no CUDA: CUDA checks SKIP, CPU smoke versions run'}; {machine_description()}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="pyica-device-check-") as tmp:
        for name in args.only or CHECKS:
            t0 = time.perf_counter()
            details = []
            if not CUDA and name != "train_verify":
                say(f"SKIP  {name:<18} (no CUDA): running the CPU smoke version")
            try:
                work = Path(tmp) / name
                work.mkdir()
                ok, value, note = CHECKS[name](args, work)
                status = "PASS" if ok else "FAIL"
                text = f"{value:.6g}  {note}"
            except Skip as why:
                status, text = "SKIP", str(why)
            except Exception as err:  # noqa: BLE001 - one check's failure must not stop the others
                status, text = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                details = traceback.format_exc().splitlines()
            failed += status == "FAIL"
            label = f"{name} [cpu smoke]" if not CUDA and status != "SKIP" else name
            say(f"{status:<5} {label:<30} {text}  ({time.perf_counter() - t0:.1f} s)")
            lines.extend("      " + d for d in details)
    say(f"device_check: {failed} FAILED" if failed else "device_check: no check FAILED")
    args.log.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

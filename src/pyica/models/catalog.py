"""The models pyica ships, declared as data: names, metadata and where each builder lives.

:mod:`pyica.registry` registers these when it is first used. Nothing here imports torch or a model
module: a builder is named ``"module:function"`` and imported only when a model is built
(:func:`pyica.registry.create_model`), so ``pyica list`` and ``pyica info`` stay cheap. The function is
called as ``function(name, **kwargs)``. A model whose weights ship with pyica has its card in
``pyica/assets/weights/<name>.json``, read when the card is first asked for.

Each entry holds :func:`pyica.registry.register_model`'s arguments plus ``name`` and ``builder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["MODELS", "SHIPPED_WEIGHTS"]

#: Where shipped weights and their cards live (``<name>.safetensors``, ``<name>.json``).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "weights"

_MACHADO = "Machado et al., Acta Psychologica 2015"
_CORCHS = "Corchs et al., PLoS ONE 2016"
_EFFNET_REFERENCE = "pyica (this project); backbone: Tan & Le, EfficientNet, ICML 2019"
_ICNET_REFERENCE = "Feng et al., IC9600: A Benchmark Dataset for Automatic Image Complexity Assessment, TPAMI 2022"


def _classic(name: str, description: str, reference: str, score_range=None) -> dict[str, Any]:
    return {"name": name, "builder": "pyica.models.classic:build_measure", "kind": "classic",
            "description": description, "reference": reference, "score_range": score_range}


def _effnet(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "builder": "pyica.models.effnet_ridge:build_preset", "kind": "learned",
            "description": description, "reference": _EFFNET_REFERENCE, "score_range": (0.0, 1.0)}


def _cmssa(name: str, source: str) -> dict[str, Any]:
    return {"name": name, "builder": "pyica.models.cmssa:build_registered", "kind": "learned",
            "description": f"CM-SSA (cross-modal scene-semantic alignment) on {source}",
            "reference": "Luo, Li et al., CM-SSA, BMVC 2025", "score_range": (0.0, 1.0), "extras": ("cmssa",),
            "needs_weights": True}


def _icnet(name: str, label: str) -> dict[str, Any]:
    return {"name": name, "builder": "pyica.models.icnet:build_registered", "kind": "learned",
            "description": f"ICNet (two ResNet-18 branches, SLAM, map + score heads) trained on {label}; "
                           "native 1/8-resolution complexity map",
            "reference": _ICNET_REFERENCE, "score_range": (0.0, 1.0), "needs_weights": True}


MODELS: tuple[dict[str, Any], ...] = (
    # classic measures (pyica.models.classic), each a function of the pixels at a fixed working scale
    _classic("compression_ratio_jpeg", "JPEG (q75, 4:2:0) size beyond a flat image's / raw size",
             f"{_MACHADO}; {_CORCHS}"),
    _classic("compression_ratio_png", "lossless PNG (zlib level 1) size beyond a flat image's / raw size",
             f"{_MACHADO}; {_CORCHS}"),
    _classic("edge_density", "fraction of Canny edge pixels (sigma 1, thresholds 10%/20%)",
             f"Canny, IEEE TPAMI 1986; {_MACHADO}; {_CORCHS}", score_range=(0.0, 1.0)),
    _classic("entropy", "Shannon entropy of the grey-level histogram (bits)",
             "Shannon 1948; Rigau, Feixas & Sbert, Computational Aesthetics 2005", score_range=(0.0, 8.0)),
    _classic("spatial_information", "mean Sobel gradient magnitude of the luma (SI_mean)",
             "Yu & Winkler, QoMEX 2013; ITU-T P.910"),
    _classic("colorfulness", "Hasler & Suesstrunk colourfulness", "Hasler & Suesstrunk, SPIE 5007, 2003"),
    _classic("multiscale_gradient", "mean Sobel gradient magnitude averaged over a 4-level pyramid",
             "multi-scale extension of SI_mean (Yu & Winkler, QoMEX 2013)"),
    _classic("unique_colors", "fraction of distinct 5-bit colours, averaged over 3 scales", _CORCHS,
             score_range=(0.0, 1.0)),
    # the default model and its presets (pyica.models.effnet_ridge; configs in its PRESETS)
    _effnet("effnet_lite0_ridge.savoias",
            "the first default: EfficientNet-Lite0 (192 px square) multi-stage mean/std features + ridge, "
            "trained on SAVOIAS"),
    _effnet("effnet_lite0_rank.savoias",
            "the default's features (EfficientNet-Lite0, 192 px square) + ridge fitted to within-category ranks, "
            "trained on SAVOIAS"),
    _effnet("effnet_lite0_within.savoias",
            "default: EfficientNet-Lite0 (192 px square) mean/std features of its first 6 stages, ridge fitted "
            "within SAVOIAS categories to ranks, penalty chosen by leave-one-category-out"),
    _effnet("effnet_lite0_ms_within.savoias",
            "multi-scale: the default's recipe on EfficientNet-Lite0 at 192 and 288 px (first 6 stages each), "
            "about 3x the default's compute"),
    _effnet("effnet_lite2_lite0_ridge.savoias",
            "accurate: EfficientNet-Lite2 (longest side 384 px) + Lite0 (224 px square) multi-stage mean/std "
            "features + ridge, trained on SAVOIAS"),
    # CM-SSA (pyica.models.cmssa; encoders in its ENCODER_PRESETS)
    _cmssa("cmssa_clip.vit_b32", "openai/clip-vit-base-patch32"),
    _cmssa("cmssa_clip.vit_b16", "openai/clip-vit-base-patch16"),
    _cmssa("cmssa_offline.lite2_minilm", "EfficientNet-Lite2 + all-MiniLM-L6-v2 (PyPI wheels)"),
    # CLICv2 probe (pyica.models.clicv2_probe)
    {"name": "clicv2_probe.vit_tiny", "builder": "pyica.models.clicv2_probe:build_registered", "kind": "learned",
     "description": "CLICv2 ViT-Ti encoder (frozen) with a trained ICNet-style or linear probing head",
     "reference": "Liu, Zhao, Chen, CLICv2 (ICNet head: Feng et al., IC9600, TPAMI 2022)",
     "score_range": (0.0, 1.0), "needs_weights": True},
    # ICNet (pyica.models.icnet)
    _icnet("icnet.ic9600", "IC9600"),
    _icnet("icnet.savoias", "SAVOIAS"),
)


"""Inference speed and model size, measured the same way for every compared method.

Speed is the network's own time: the test images are read and mapped beforehand (and moved to the
device), then ``model([input])`` runs one image at a time under ``torch.no_grad()``: ``warmup``
untimed calls, then ``repeats`` timed passes over the same N images; seconds per image is the
median over the passes (CUDA is synchronised around each pass).
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Dict, List, Sequence

import torch

__all__ = ["count_parameters", "measure_speed", "device_description"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (``sum(p.numel())``, trainable or not; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def device_description(device: str) -> str:
    """Human-readable name of ``device`` (GPU name, or the CPU's processor string)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(
    model: torch.nn.Module,
    inputs: Sequence[Dict],
    *,
    warmup: int = 2,
    repeats: int = 3,
) -> Dict:
    """Time ``model([x])`` over ``inputs`` (one image per call).

    Args:
        model: a Detectron2 model in eval mode (it is put in eval mode here too).
        inputs: mapped test dicts (``image`` (C, H, W) tensor, ``height``, ``width``).
        warmup: untimed calls before timing (cuDNN autotune, allocator, lazy init).
        repeats: timed passes over all inputs; the median pass is reported.

    Returns:
        dict with ``sec_per_image`` (median), ``fps``, ``pass_sec_per_image`` (every pass),
        ``num_images``, ``warmup``, ``repeats``, ``device``, ``device_name``, ``torch_threads``.
    """
    if not inputs:
        raise ValueError("measure_speed: no input images")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"measure_speed: need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    device = next(model.parameters()).device
    model.eval()
    # Moving the images first keeps the host-to-device copy out of every method's time alike.
    batch: List[Dict] = [{**x, "image": x["image"].to(device)} for x in inputs]
    per_pass: List[float] = []
    with torch.no_grad():
        for i in range(warmup):
            model([batch[i % len(batch)]])
        _sync(device)
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for x in batch:
                model([x])
            _sync(device)
            per_pass.append((time.perf_counter() - t0) / len(batch))
    sec = statistics.median(per_pass)
    return {
        "sec_per_image": sec,
        "fps": (1.0 / sec) if sec > 0 else float("inf"),
        "pass_sec_per_image": per_pass,
        "num_images": len(batch),
        "warmup": int(warmup),
        "repeats": int(repeats),
        "device": str(device),
        "device_name": device_description(str(device)),
        "torch_threads": torch.get_num_threads(),
    }

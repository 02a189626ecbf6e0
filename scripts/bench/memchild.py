"""Child process of the memory comparison: one VQ-GAN variant, a few training steps, its own peak RSS.

A process's peak resident set (``ru_maxrss``) cannot be reset, so each variant runs in a fresh interpreter; inside
it the peak of the fit alone is read from ``VmHWM``, reset after the model (and its LPIPS network) is built, where
Linux allows it. ``python -m scripts.bench.memchild '<json>'`` prints one JSON line with its measurements as the
last line of stdout. The request holds only plain values chosen by the parent (config name, variant, size, steps),
and the switch names in it are checked against the fixed table of :mod:`scripts.bench.switches`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import torch


def checked_resolution(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parent's switch resolution, each name checked against the fixed table of :mod:`scripts.bench.switches`."""
    from scripts.bench.switches import SWITCHES

    out = {}
    for s in SWITCHES:
        r = resolved.get(s.key) or {}
        how, name = r.get("how"), r.get("name")
        constant = (f"{s.constant[0]}.{s.constant[1]}",) if s.constant else ()
        allowed = {"hparam": s.hparams, "attribute": (s.attr,) if s.attr else (), "constant": constant}.get(how, ())
        if how is not None and name not in allowed:
            raise ValueError(f"switch {s.key}: {how} {name!r} is not in the table")
        out[s.key] = {"key": s.key, "how": how, "name": name}
    return out


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Build the variant, train ``steps`` batches, return peak RSS (and CUDA peak) in MB."""
    from scripts.bench.common import MODELS
    from scripts.bench.machine import PeakMemory, max_rss_mb
    from scripts.bench.switches import VARIANTS, build_variant, constants_of
    from scripts.bench.training import fit_steps

    torch.set_num_threads(int(request["threads"]))
    spec = MODELS[request["model"]]
    variant = request["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    device = torch.device(request.get("device", "cpu"))
    resolved = checked_resolution(request["resolved"])
    model, info = build_variant(spec.config, variant, resolved, int(request["seed"]), int(request["label_nc"]))
    size = tuple(int(s) for s in request["size"])
    if model.hparams.perceptual_weight > 0:
        model.perceptual_net()  # built on first use: build it now, so its construction is not part of the fit
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()  # VmHWM from here on: the fit's working set (ru_maxrss also counts the imports and builds)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with constants_of(variant, resolved):
        files = [str(f) for f in request.get("label_files") or []]  # label maps the parent was given
        timer = fit_steps(model, spec.stage, size, int(request["steps"]), 1, int(request["seed"]), device,
                          label_files=files or None)  # fmt: skip
    fit = memory.result()
    out = {
        "peak_mb": fit["peak_mb"] if memory.resettable else round(max_rss_mb(), 1),
        "peak_kind": "VmHWM reset before the fit" if memory.resettable else "ru_maxrss (VmHWM not resettable)",
        "process_peak_rss_mb": round(max_rss_mb(), 1),
        "rss_before_fit_mb": fit["baseline_mb"],
        "step_times_s": [round(t, 4) for t in timer.times],
        "switches": info["switches"],
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one request (the JSON of ``argv[0]``) and print the result as the last stdout line."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "vq_gan_3d"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    result = measure(json.loads(argv[0]))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

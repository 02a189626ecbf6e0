"""The switches that keep today's VQ-GAN computation next to the faster one, found in this checkout by inspection.

A before/after ratio is only measured for a switch that exists: each one is looked up as a ``VQGANModule``
argument (an hparam, the way a config sets it), as an attribute its submodules read at every forward (``lookup``
of the SPADE decoder and its norms, ``cpu_onednn`` of the convolutions), or as a module constant read at every call
(the codebook's distance chunk), set for the duration of a variant's steps. A switch found none of these ways is
reported as not available, and the variants then differ only in the switches that exist.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Switch:
    """One speed switch of the VQ-GAN.

    Attributes:
        key: name in the report.
        what: what it changes.
        hparams: ``VQGANModule`` arguments that may hold it (the first one found is used).
        attr: attribute of submodules that holds it when no hparam does (None: hparam only).
        before: its value for today's computation.
        after: its value for the new one (checkpointing stays off: it trades time for memory).
        constant: (module, name, value of today's computation) of a module constant that holds it; False in a
            variant sets the constant to that value while the variant runs, True leaves the module's own value.
    """

    key: str
    what: str
    hparams: tuple[str, ...]
    attr: str | None
    before: bool
    after: bool
    constant: tuple[str, str, int] | None = None


SWITCHES = (
    Switch(
        "spade_lookup",
        "SPADE's first conv as a lookup by class, gamma and beta as one conv",
        ("spade_lookup", "lookup"),
        "lookup",
        False,
        True,
    ),
    Switch(
        "checkpointing",
        "activation checkpointing of encoder, decoder and SPADE blocks",
        ("checkpointing",),
        "checkpointing",
        False,
        False,
    ),
)
BY_KEY = {s.key: s for s in SWITCHES}
# the variants of the before/after comparison: switch values over SWITCHES
VARIANTS: dict[str, dict[str, bool]] = {
    "before": {s.key: s.before for s in SWITCHES},
    "after": {s.key: s.after for s in SWITCHES},
    "after + checkpointing": {**{s.key: s.after for s in SWITCHES}, "checkpointing": True},
}


def _module_params() -> set[str]:
    from vq_gan_3d.module import VQGANModule

    return set(inspect.signature(VQGANModule.__init__).parameters)


def _attr_holders(model: torch.nn.Module, attr: str) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, attr, None), bool)]


def resolve(switch: Switch, probe: torch.nn.Module | None = None) -> dict[str, Any]:
    """How ``switch`` can be set here: ``{"key", "how", "name"}``, ``how`` one of "hparam", "attribute",
    "constant", None.

    Args:
        probe: a built VQ-GAN whose submodules are searched for the attribute (SPADE decoder for ``lookup``).
    """
    params = _module_params()
    name = next((h for h in switch.hparams if h in params), None)
    if name is not None:
        return {"key": switch.key, "how": "hparam", "name": name}
    if switch.attr and probe is not None and _attr_holders(probe, switch.attr):
        return {"key": switch.key, "how": "attribute", "name": switch.attr}
    if switch.constant is not None:
        module, const, _ = switch.constant
        if isinstance(getattr(importlib.import_module(module), const, None), int):
            return {"key": switch.key, "how": "constant", "name": f"{module}.{const}"}
        return {"key": switch.key, "how": None, "name": None, "reason": f"{module} has no {const}"}
    reason = f"VQGANModule has none of the arguments {list(switch.hparams)}"
    if switch.attr:
        reason += f" and no submodule has a {switch.attr!r} attribute"
    return {"key": switch.key, "how": None, "name": None, "reason": reason}


def resolve_all(probe: torch.nn.Module | None) -> dict[str, dict[str, Any]]:
    """:func:`resolve` of every switch."""
    return {s.key: resolve(s, probe) for s in SWITCHES}


def hparam_changes(values: dict[str, bool], resolved: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Constructor arguments for the switches that are hparams."""
    return {resolved[k]["name"]: v for k, v in values.items() if resolved[k]["how"] == "hparam"}


def apply_attributes(model: torch.nn.Module, values: dict[str, bool], resolved: dict[str, dict[str, Any]]) -> None:
    """Set the switches that are submodule attributes on a built model (in place)."""
    for key, value in values.items():
        if resolved[key]["how"] == "attribute":
            for m in _attr_holders(model, resolved[key]["name"]):
                setattr(m, resolved[key]["name"], value)


@contextlib.contextmanager
def constants_of(variant: str, resolved: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Inside: the module constants of the switches ``variant`` turns off hold today's values; restored after."""
    saved = []
    for s in SWITCHES:
        if s.constant is not None and resolved[s.key]["how"] == "constant" and not VARIANTS[variant][s.key]:
            module = importlib.import_module(s.constant[0])
            saved.append((module, s.constant[1], getattr(module, s.constant[1])))
            setattr(module, s.constant[1], s.constant[2])
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def differing(a: str, b: str, resolved: dict[str, dict[str, Any]]) -> list[str]:
    """Switches that variants ``a`` and ``b`` set differently and that exist here."""
    return [k for k in VARIANTS[a] if VARIANTS[a][k] != VARIANTS[b][k] and resolved[k]["how"] is not None]


def build_variant(
    config: str, variant: str, resolved: dict[str, dict[str, Any]], seed: int, label_nc: int | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A VQ-GAN of ``config/model/<config>.yaml`` (GAN on) with the switches of ``variant``, seeded weights.

    Args:
        label_nc: classes of the label map (the SPADE cost grows with them); None: the config's (mni152, 5).
    """
    from scripts.bench.build import build_vqgan

    values = VARIANTS[variant]
    torch.manual_seed(seed)
    extra = {} if label_nc is None else {"label_nc": int(label_nc)}
    model, changes = build_vqgan(config, **extra, **hparam_changes(values, resolved))
    apply_attributes(model, values, resolved)
    applied = {k: v for k, v in values.items() if resolved[k]["how"] is not None}
    return model, {"config_changes": changes, "switches": applied}

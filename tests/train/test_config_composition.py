"""Config composition: every composed model config matches its constructor's signature, variants inherit.

Model configs inherit (``defaults: [vq_gan_3d, _self_]``) instead of copying, so a key is spelled out once. The
checks here therefore run on *composed* configs: every key must be an argument of the class the config builds
(a typo is an error), every argument without a default must be given, and a denoiser group's
``denoiser_kwargs`` must be arguments of that denoiser's constructor.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffusion.denoiser_factory import DENOISERS
from diffusion.distill import DistillationModule
from diffusion.label_diffusion import LabelLatentDiffusion
from diffusion.module import LatentDiffusionModule
from tests.train.helpers import compose_config
from train.run import CONFIG_DIR
from vq_gan_3d.label_autoencoder import LabelAutoencoder
from vq_gan_3d.module import VQGANModule

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DENOISER_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model" / "denoiser").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# The classes a model config may name: a fixed table, so a config never decides what code is imported.
TARGETS = {
    "vq_gan_3d.module.VQGANModule": VQGANModule,
    "diffusion.module.LatentDiffusionModule": LatentDiffusionModule,
    "vq_gan_3d.label_autoencoder.LabelAutoencoder": LabelAutoencoder,
    "diffusion.label_diffusion.LabelLatentDiffusion": LabelLatentDiffusion,
    "diffusion.distill.DistillationModule": DistillationModule,
}
# Constructor arguments that are not hyperparameters a config sets (filled by the code).
NOT_CONFIG = {"self"}


def _compose(primary: str, overrides: list[str]):
    return compose_config(primary, [*overrides, "paths.output_dir=/nonexistent/out", "paths.data_dir=data"])


def _primary(model_name: str) -> str:
    """The primary config (config/<primary>.yaml) whose stage a model config belongs to."""
    for primary in ("label_ae", "label_diffusion", "diffusion", "distill"):
        if model_name.startswith(primary):
            return primary
    return "vqgan"


def constructor_parameters(cls: type) -> set[str]:
    """Named arguments of ``cls(...)``, following ``**kwargs`` pass-through to the base classes' constructors."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names - {"self"}


def _signature_check(node: dict, cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    keys = {k for k in node if not k.startswith("_")}
    unknown = keys - set(params)
    assert not unknown, f"{cls.__name__} takes no argument(s) {sorted(unknown)}"
    required = {
        name
        for name, p in params.items()
        if name not in NOT_CONFIG and p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    missing = required - keys
    assert not missing, f"{cls.__name__} needs {sorted(missing)}"


@pytest.mark.parametrize("name", MODELS)
def test_composed_model_config_matches_constructor(name: str) -> None:
    cfg = _compose(_primary(name), [f"model={name}"])
    node = OmegaConf.to_container(cfg.model, resolve=False)
    assert node["_target_"] in TARGETS, f"model/{name}.yaml builds {node['_target_']}, not a known model class"
    cls = TARGETS[node["_target_"]]
    _signature_check(node, cls)
    if cls is LatentDiffusionModule:
        denoiser = DENOISERS[node["denoiser"]]
        kwargs = set(node["denoiser_kwargs"])
        # channels, label_nc and latent_factor come from the first stage, the rest from denoiser_kwargs
        params = constructor_parameters(denoiser) - {"channels", "label_nc", "latent_factor"}
        assert kwargs <= params, f"{denoiser.__name__} takes no argument(s) {sorted(kwargs - params)}"


@pytest.mark.parametrize("name", DENOISER_CONFIGS)
def test_every_denoiser_group_option_composes(name: str) -> None:
    cfg = _compose("diffusion", [f"model/denoiser@model={name}"])
    assert cfg.model.denoiser in DENOISERS
    kwargs = set(cfg.model.denoiser_kwargs)
    assert kwargs <= constructor_parameters(DENOISERS[cfg.model.denoiser]) - {"channels", "label_nc", "latent_factor"}


def test_variants_inherit_their_parent() -> None:
    """The SPADE VQ-GAN is vq_gan_3d with 2 values changed, the tiny SPADE one the tiny one with 2 (lookup off)."""

    def model(name: str) -> dict:
        return OmegaConf.to_container(_compose(_primary(name), [f"model={name}"]).model, resolve=False)

    def changed(a: dict, b: dict) -> set[str]:
        return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}

    assert changed(model("vq_gan_3d"), model("vq_gan_spade")) == {"decoder", "discriminator_iter_start"}
    assert changed(model("vq_gan_3d_tiny"), model("vq_gan_spade_tiny")) == {"decoder", "spade_lookup"}
    paper, monai = model("diffusion"), model("diffusion_monai_spade")
    assert changed(paper, monai) == {"denoiser", "denoiser_kwargs"}
    # the group replaces denoiser_kwargs as a whole: no Unet3D-only key survives in the MONAI denoiser's
    assert "use_rotary" in paper["denoiser_kwargs"] and "use_rotary" not in monai["denoiser_kwargs"]
    for name in ("vq_gan_spade.yaml", "vq_gan_spade_tiny.yaml", "diffusion_monai_spade.yaml"):
        text = (CONFIG_DIR / "model" / name).read_text()
        assert "defaults:" in text and len([ln for ln in text.splitlines() if ln and not ln.startswith("#")]) < 10


def test_cli_override_of_a_new_intensity_kind() -> None:
    """The README's own-data example: a dict intensity spec on the command line composes (it used to fail)."""
    spec = "dataset.intensity={kind: ct_window, hu_min: -1000, hu_max: 1000}"
    cfg = _compose("vqgan", ["dataset=nifti_pairs", spec])
    expected = {"kind": "ct_window", "hu_min": -1000, "hu_max": 1000}
    assert OmegaConf.to_container(cfg.dataset.datamodule.dataset.intensity, resolve=True) == expected


PAPER_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith(("duke", "autopet", "synthrad"))]
# primary config and the trainer values of the one shared block, by the experiment's stage
KEYS = ("max_steps", "val_check_interval", "limit_val_batches")
SHARED_BLOCKS = {  # checked in this order: "diffusion" is also in "labels_diffusion"
    "labels_ae": ("label_ae", dict(zip(KEYS, (100000, 2000, 20), strict=True))),
    "labels_diffusion": ("label_diffusion", dict(zip(KEYS, (300000, 5000, 20), strict=True))),
    "diffusion": ("diffusion", dict(zip(KEYS, (700000, 5000, 20), strict=True))),
    "vqgan": ("vqgan", dict(zip(KEYS, (400000, 2000, 50), strict=True))),
}


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_experiments_share_one_trainer_block(name: str) -> None:
    primary, shared = next(v for k, v in SHARED_BLOCKS.items() if k in name)
    cfg = _compose(primary, [f"experiment={name}"])
    assert {k: cfg.trainer[k] for k in shared} == shared
    assert cfg.trainer.accelerator == "gpu" and cfg.dataset.datamodule.num_workers == 4
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert "max_steps" not in text  # the trainer block lives in experiment_base/, not in each experiment


@pytest.mark.parametrize("stage", ["vqgan", "diffusion"])
def test_own_data_cpu_experiments(stage: str, tmp_path: Path) -> None:
    """experiment=nifti_pairs_<stage>_cpu with a dataset config of the user's own, found via hydra.searchpath."""
    (tmp_path / "dataset").mkdir()
    text = (CONFIG_DIR / "dataset" / "nifti_pairs.yaml").read_text().replace("label_nc: 2 ", "label_nc: 3 ", 1)
    (tmp_path / "dataset" / "mydata.yaml").write_text(text.replace("${paths.data_dir}/nifti_pairs", "/data/mine"))
    cfg = _compose(
        stage, [f"experiment=nifti_pairs_{stage}_cpu", "dataset=mydata", f"hydra.searchpath=[file://{tmp_path}]"]
    )
    assert (cfg.dataset.root, cfg.dataset.label_nc, cfg.dataset.datamodule.num_workers) == ("/data/mine", 3, 0)
    assert cfg.trainer.accelerator == "cpu"
    if stage == "vqgan":
        assert cfg.model.perceptual_weight == 0.0 and cfg.model.decoder == "spade"  # no VGG weights needed
    else:
        assert cfg.model.denoiser_kwargs.dim == 16 and cfg.model.data_info.root == "/data/mine"


# ---------------------------------------------------------------------------------------------- configs without copies
PRIMARIES = {"vqgan": "vqgan", "diffusion": "val_loss", "label_ae": "val_loss", "label_diffusion": "val_loss",
             "distill": "val_loss"}  # fmt: skip


@pytest.mark.parametrize("primary", sorted(PRIMARIES))
def test_primary_configs_share_one_defaults_list(primary: str) -> None:
    """Each primary config names its model and callbacks, then includes config/stage.yaml: nothing else."""
    defaults = OmegaConf.load(CONFIG_DIR / f"{primary}.yaml").defaults
    assert list(defaults) == ["_self_", {"model": primary if primary != "vqgan" else "vq_gan_3d"},
                              {"callbacks": PRIMARIES[primary]}, "stage"]  # fmt: skip
    cfg = _compose(primary, [])
    assert cfg.task_name == primary and cfg.seed == 520 and cfg.ckpt_path == "last"
    assert cfg.callbacks.model_checkpoint.monitor == ("val/rec_loss" if primary == "vqgan" else "val/loss")


def test_an_experiment_still_picks_its_model() -> None:
    """The model is listed before stage.yaml's experiment, so the experiment's ``override /model`` wins."""
    assert _compose("diffusion", ["experiment=mni152_diffusion_cpu"]).model.denoiser_kwargs.dim == 16


def test_rflow_keys_live_in_one_objective_config() -> None:
    """diffusion_rflow*.yaml are diffusion*.yaml plus model/objective/rflow.yaml, with no key of their own."""
    objective = OmegaConf.load(CONFIG_DIR / "model" / "objective" / "rflow.yaml")
    for base in ("diffusion", "diffusion_tiny"):
        variant = base.replace("diffusion", "diffusion_rflow")
        assert set(OmegaConf.load(CONFIG_DIR / "model" / f"{variant}.yaml")) == {"defaults"}
        added = _compose("diffusion", [f"model={base}", "+model/objective@model=rflow"]).model
        named = _compose("diffusion", [f"model={variant}"]).model
        assert added == named
        assert {k: named[k] for k in objective} == OmegaConf.to_container(objective)


def test_experiment_bases_are_not_experiments() -> None:
    """The shared trainer blocks live outside experiment/: each is included by experiments, none is selectable."""
    assert not [p for p in (CONFIG_DIR / "experiment").iterdir() if p.is_dir()]
    texts = "".join((CONFIG_DIR / "experiment" / f"{e}.yaml").read_text() for e in EXPERIMENTS)
    for base in (CONFIG_DIR / "experiment_base").glob("*.yaml"):
        assert f"/experiment_base/{base.stem}" in texts, base.name
        with pytest.raises(Exception, match="experiment"):
            _compose("diffusion", [f"experiment={base.stem}"])

"""Shared fixtures: composed training configs pointing every output at ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "nxp2seg" / "configs"


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests where CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _config_dir() -> str:
    import nxp2seg

    installed = Path(nxp2seg.__file__).resolve().parent / "configs"
    return str(installed if installed.is_dir() else CONFIG_DIR)


def compose_train(overrides: list[str]):
    """Compose ``train.yaml`` with ``overrides`` (outside any Hydra app)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=_config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory) -> Path:
    """A tiny labelled cohort (4 subjects x thigh + calf, RAS and LPS, one test subject)."""
    from helpers_synthetic import make_synthetic_cohort

    return make_synthetic_cohort(tmp_path_factory.mktemp("cohort") / "synthetic", subjects=4)


@pytest.fixture
def train_overrides(synthetic_cohort, tmp_path) -> list[str]:
    """Overrides of a seconds-long run on the synthetic cohort, every output in ``tmp_path``."""
    return [
        "experiment=smoke",
        f"data.cohort={synthetic_cohort}",
        f"output_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.root_dir={tmp_path}",
        "data.loader.verify=false",
    ]


@pytest.fixture
def cfg_train(train_overrides):
    """The composed training config (``experiment=smoke`` on the synthetic cohort)."""
    return compose_train(train_overrides)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, synthetic_cohort) -> Path:
    """A small segmenter trained ~20 s on the synthetic cohort (test Dice ~0.9): for predict tests."""
    from nxp2seg.train import train

    root = tmp_path_factory.mktemp("trained")
    cfg = compose_train([
        "experiment=smoke", f"data.cohort={synthetic_cohort}", f"output_dir={root / 'run'}",
        f"paths.cache_dir={root / 'cache'}", f"paths.root_dir={root}", "data.loader.verify=false",
        "grading=none", "trainer.max_epochs=24", "trainer.limit_train_batches=4",
        "trainer.check_val_every_n_epoch=24", "test=false",
    ])
    _, objects = train(cfg)
    return Path(objects["bundle_dir"])

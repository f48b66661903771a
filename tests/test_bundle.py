"""Model bundle: round trip, and refusal of tampered, incomplete or too-new bundles."""

from __future__ import annotations

import json

import pytest
import torch

from nxp2seg.data import DatasetDescription
from nxp2seg.data.preprocessing import Preprocessing
from nxp2seg.models.bundle import BundleError, load_bundle, write_bundle
from nxp2seg.models.networks import build_dynunet

KWARGS = {
    "in_channels": 2,
    "out_channels": 16,
    "spacing": [2.5, 2.5, 6.0],
    "patch_size": [16, 16, 4],
    "filters": [4, 8, 16],
}


class _Module(torch.nn.Module):  # stands in for the LightningModule: the net under "net."
    def __init__(self):
        super().__init__()
        self.net = build_dynunet(**KWARGS)


@pytest.fixture
def bundle_dir(tmp_path):
    torch.manual_seed(0)
    module = _Module()
    path = write_bundle(
        tmp_path / "bundle",
        module,
        config={"model": {"net": {"filters": [4, 8, 16]}}, "seed": 0},
        dataset=DatasetDescription(),
        preprocessing=Preprocessing(target_spacing=(2.5, 2.5, 6.0), patch_size=(16, 16, 4)),
        validation={"val": {"dice_mean": 0.5}},
        network={
            "target": "nxp2seg.models.networks.build_dynunet",
            "kwargs": KWARGS,
            "state_prefix": "net.",
        },
    )
    return path, module


def test_bundle_round_trip(bundle_dir):
    path, module = bundle_dir
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [
            "weights.safetensors",
            "config.yaml",
            "dataset.json",
            "preprocessing.json",
            "validation.json",
            "bundle.json",
        ]
    )
    bundle = load_bundle(path)
    assert bundle.preprocessing.patch_size == (16, 16, 4)
    assert bundle.schema.max_label == 15 and bundle.grade_scale.name == "beltrame6"
    assert bundle.validation["val"]["dice_mean"] == 0.5 and bundle.config.seed == 0
    net = bundle.build_network()
    x = torch.randn(1, 2, 16, 16, 4)
    module.eval()
    assert torch.allclose(net(x), module.net(x), atol=1e-6)
    assert bundle.manifest["package_version"] and "commit" in bundle.manifest["git"]


def test_tampered_weights_are_refused(bundle_dir):
    path, _ = bundle_dir
    raw = bytearray((path / "weights.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (path / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(path)


def test_incompatible_bundles_are_refused(bundle_dir, tmp_path):
    path, _ = bundle_dir
    manifest = json.loads((path / "bundle.json").read_text())
    for key, value, msg in [
        ("package_version", "99.0.0", "newer than the installed"),
        ("format_version", 99, "format version"),
    ]:
        (path / "bundle.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(BundleError, match=msg):
            load_bundle(path)
    (path / "bundle.json").write_text(
        json.dumps({**manifest, "network": {**manifest["network"], "target": "os.system"}})
    )
    with pytest.raises(BundleError, match="not an nxp2seg builder"):
        load_bundle(path).build_network()
    (path / "preprocessing.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)

"""The architecture holds: the layer contract, no import cycle, modules of one job and modest size.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are
described in ``docs/architecture.md``; this test runs them, so the quick suite
(and with it ``.ci/run``) enforces them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nxp2seg

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(nxp2seg.__file__).resolve().parent
MAX_LINES = 500
#: Modules still over the limit, each with the issue that splits it. Remove an entry when it is split.
OVER_THE_LIMIT: dict[str, str] = {}


def test_import_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, "
         "no_logo=True))"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout and "KEPT" in run.stdout


def test_modules_stay_under_500_lines():
    sizes = {str(p.relative_to(SRC)): len(p.read_text(encoding="utf-8").splitlines())
             for p in SRC.rglob("*.py")}
    over = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in OVER_THE_LIMIT}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"


def test_config_records_take_their_defaults_from_the_packaged_config():
    """Defaults are written once, in configs/: the records read them (code and YAML cannot drift)."""
    import ast
    import inspect
    from dataclasses import asdict

    from nxp2seg.config_utils import packaged_defaults
    from nxp2seg.data.pipelines import Augmentation, Sampling
    from nxp2seg.data.preprocessing import PlanOptions

    for cls, key in ((Augmentation, "augmentation"), (Sampling, "sampling"), (PlanOptions, "preprocessing")):
        yaml = packaged_defaults("data/phantom.yaml", key)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cls()).items()}
        assert plain == yaml, cls.__name__
        tree = ast.parse(inspect.getsource(cls))
        literal = [n.target.id for n in ast.walk(tree)
                   if isinstance(n, ast.AnnAssign) and isinstance(n.value, ast.Constant)]
        assert not literal, f"{cls.__name__}: defaults typed in code: {literal}"


def test_segmenter_inference_defaults_are_the_configs():
    from nxp2seg.config_utils import packaged_defaults
    from nxp2seg.models.segmenter import Segmenter

    seg = Segmenter(net=None, loss=None, optimizer=None)
    assert seg.inference_cfg == packaged_defaults("model/segmenter.yaml", "inference")


def test_every_package_has_a_layer():
    """A new top-level module or package must be placed in the layer contract (pyproject.toml)."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = {m.strip() for layer in contract["layers"] for m in layer.replace(":", "|").split("|")}
    top = {f"nxp2seg.{p.stem if p.is_file() else p.name}" for p in SRC.iterdir()
           if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
           or (p.is_dir() and (p / "__init__.py").exists())}
    missing = sorted(top - placed)
    assert not missing, (f"{missing} are in no layer: add each to the layers of [tool.importlinter] in "
                         "pyproject.toml (see docs/architecture.md)")

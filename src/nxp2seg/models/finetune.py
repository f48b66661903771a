"""Fine-tuning: start a training from a bundle's network (``model.init_from=BUNDLE``).

``python -m nxp2seg.train data.cohort=DIR model.init_from=BUNDLE experiment=finetune``

* The new model has the bundle's architecture (its network kwargs) and sees
  the data as the bundle did: its preprocessing (orientation, target spacing,
  patch size, normalisation, laterality channel) is reused, not re-planned.
* Compatibility is checked before anything trains, with a message that says
  what differs and what to do: the cohort's channels must be the bundle's
  (``T1, STIR`` or ``FAT, WATER``); every tensor of the network but the output
  layer must fit.
* A different label schema (compartment -> muscle level, or another label
  set) re-initialises only the output layer: the tensors whose shape depends
  on the number of output labels (found by building the network once more
  with one label more), or all of them when the schema changed but their
  number did not. Everything else starts from the bundle's weights.
* The grading head is not carried over: its features change with the
  network, and a cohort of a few subjects rarely has grades for it to learn.
"""

from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict
from torch import nn

from nxp2seg.models.bundle import Bundle, BundleError, load_bundle

__all__ = ["FineTuneError", "FineTuneStart", "fine_tune_start", "pop_init_from", "without_val_monitors"]

log = logging.getLogger(__name__)


class FineTuneError(ValueError):
    """The bundle cannot start a training on this cohort (the message says why and what to do)."""


def pop_init_from(cfg: DictConfig) -> str | None:
    """Take ``model.init_from`` out of the model config (the module does not take it)."""
    if "model" not in cfg or "init_from" not in cfg.model:
        return None
    with open_dict(cfg):
        value = cfg.model.pop("init_from")
    return None if value in (None, "", "null") else str(value)


def fine_tune_start(cfg: DictConfig) -> FineTuneStart | None:
    """``model.init_from``: the bundle to start from, or ``None``; the path moves to the
    config's top level (``init_from``), which the bundle records."""
    init_from = pop_init_from(cfg)
    if init_from is None:
        return None
    with open_dict(cfg):
        cfg.init_from = init_from
    return FineTuneStart.load(init_from)


@dataclass
class FineTuneStart:
    """A bundle to fine-tune from, and what it decides about the new training."""

    bundle: Bundle

    @classmethod
    def load(cls, path: str | Path) -> "FineTuneStart":
        try:
            return cls(load_bundle(path))
        except BundleError as e:
            raise FineTuneError(f"model.init_from={path}: {e}") from None

    @property
    def preprocessing(self) -> Any:
        """The bundle's preprocessing, for the data module (``preprocessing=``)."""
        return self.bundle.preprocessing

    def check_cohort(self, dataset: Any, where: str) -> None:
        """Refuse a cohort whose channels are not the bundle's."""
        want = tuple(self.bundle.preprocessing.channels)
        have = tuple(dataset.channel_names[k] for k in sorted(dataset.channel_names, key=int))
        if want != have:
            raise FineTuneError(
                f"model.init_from={self.bundle.path}: the bundle reads channels {list(want)}, the cohort "
                f"{where} has {list(have)}. Fine-tune from a bundle trained on the same contrast (for "
                "Dixon: pre-train on the Dixon phantom, python -m nxp2seg.phantom sequence=dixon ..., "
                "then python -m nxp2seg.train data.phantom.overrides.sequence=dixon)"
            )

    def build_network(self, num_classes: int, schema: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The bundle's architecture with ``num_classes`` outputs, initialised from its weights.

        Returns:
            ``(net, spec)``: the network and the spec the new bundle records.
        """
        spec = copy.deepcopy(self.bundle.manifest["network"])
        kwargs = {**spec["kwargs"], "out_channels": int(num_classes)}
        builder = _builder(spec["target"])
        net = builder(**kwargs)
        prefix = spec.get("state_prefix", "")
        state = {k[len(prefix):]: v for k, v in self.bundle.state_dict.items() if k.startswith(prefix)}
        same_schema = dict(self.bundle.schema.labels) == dict(schema.labels)
        output = set() if same_schema else _output_layer(builder, kwargs)
        own = net.state_dict()
        misfit = [k for k in own if k not in output and (k not in state or state[k].shape != own[k].shape)]
        if misfit:
            raise FineTuneError(
                f"model.init_from={self.bundle.path}: the bundle's weights do not fit its own network "
                f"kwargs ({misfit[:4]}); the bundle is damaged or from another nxp2seg"
            )
        load = {k: v for k, v in state.items() if k in own and k not in output}
        net.load_state_dict(load, strict=False)
        if output:
            log.info("fine-tuning: label schema changed; output layer re-initialised (%s)", sorted(output))
        return net, {"target": spec["target"], "kwargs": kwargs, "state_prefix": prefix}


def _builder(target: str):
    module_name, _, fn_name = target.rpartition(".")
    return getattr(importlib.import_module(module_name), fn_name)


def _output_layer(builder, kwargs: dict[str, Any]) -> set[str]:
    """Names of the tensors whose shape depends on the number of output labels."""
    a = builder(**kwargs).state_dict()
    b = builder(**{**kwargs, "out_channels": int(kwargs["out_channels"]) + 1}).state_dict()
    return {k for k in a if k not in b or a[k].shape != b[k].shape}


def without_val_monitors(callbacks: list[Any]) -> list[Any]:
    """Callbacks minus those that follow a validation metric (no validation cases to give it)."""
    out = []
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("val/"):
            log.info("no validation cases: dropping %s (monitors %s)", type(cb).__name__, monitor)
            continue
        out.append(cb)
    return out

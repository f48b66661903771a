"""The learned head: grades, flags and the pattern from region feature vectors.

Shapes: ``B`` cases, ``R`` region slots, ``F`` features per region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GRADING_OUTPUTS", "READOUTS", "GradingHead"]

#: Keys the head returns.
GRADING_OUTPUTS: tuple[str, ...] = ("edema", "fat", "fascial_logit", "subcut_logit", "pattern_logits")
#: Outputs of the linear read-outs of :class:`GradingHead`, in column order.
READOUTS: tuple[str, ...] = ("fat", "fascial", "subcutaneous")


class GradingHead(nn.Module):
    """Grades, flags and pattern from region feature vectors.

    **Edema** (and the pattern) need a nonlinear map: on ``beltrame6`` the grade
    is an extent class crossed with an intensity (3, global mild, sits between
    2 and 4), and the context of the station's other regions matters. Each
    region's vector, with the station's mean vector and a learned embedding of
    its slot (``R`` slots x ``n_stations``), goes through one MLP shared by all
    regions, giving a hidden vector ``h`` and the edema grade
    ``max_grade * sigmoid(.)`` (continuous, inside ``0..max_grade``). The
    station's **pattern** logits come from the ``R`` hidden vectors in slot order,
    concatenated with the regions' grades and read-outs (detached) and a station
    embedding. With ``ensemble`` members (each its own initialisation, trained
    apart: :mod:`nxp2seg.models.grading_fit`) the grades and the pattern
    log-probabilities are averaged.

    **Fat, fascial and subcutaneous edema** are *linear* read-outs of the
    region's own standardised features (``(x - readout_mean) / readout_std``,
    the training regions' statistics), fitted apart by scikit-learn
    (:func:`~nxp2seg.models.grading_fit.fit_readouts`): fat grade
    ``max_fat * sigmoid(.)``, fascial and subcutaneous logits. Findings are rare
    (about one region in ten) and follow few measurements; a shared MLP fitted
    to every output at once overfits them.

    Why regression, not ordinal classification, for the grades: the target is
    the readers' *mean* (2.5 when they say 2 and 3), and kappa, ICC and the
    summed station score reward being close, with a cost that grows with the
    distance. The integer grade is chosen afterwards
    (:mod:`nxp2seg.models.grading_operating`).

    Args:
        in_features: region feature length.
        max_grade: the edema scale's top grade (5 ``beltrame6``, 3 ``extent4``).
        n_regions, n_stations: slots per station, stations.
        hidden, embed, dropout: MLP width, embedding width, dropout.
        max_fat: top fat grade (4).
        n_patterns: pattern classes (4).
        ensemble: MLP members.
        slot_counts: real regions of each station (default: every slot). A station with
            fewer regions (a muscle-level schema: 26 thigh, 22 calf muscles) leaves its
            last slots empty: they are left out of the station context and the pattern,
            and their outputs are 0 (:func:`nxp2seg.data.regions.slot_counts`).
    """

    def __init__(
        self,
        in_features: int,
        max_grade: int,
        n_regions: int = 6,
        n_stations: int = 2,
        hidden: int = 64,
        embed: int = 16,
        dropout: float = 0.1,
        max_fat: int = 4,
        n_patterns: int = 4,
        ensemble: int = 1,
        slot_counts: Sequence[int] | None = None,
    ):
        super().__init__()
        if int(ensemble) < 1:
            raise ValueError(f"GradingHead: ensemble must be >= 1, got {ensemble}")
        self.max_grade = float(max_grade)
        self.max_fat = float(max_fat)
        self.n_regions = int(n_regions)
        counts = [int(n_regions)] * int(n_stations) if slot_counts is None else [int(c) for c in slot_counts]
        if len(counts) != int(n_stations) or not all(0 <= c <= self.n_regions for c in counts):
            raise ValueError(
                f"GradingHead: slot_counts {counts} must give 0..{self.n_regions} regions for each of "
                f"{n_stations} stations"
            )
        valid = torch.arange(self.n_regions)[None, :] < torch.tensor(counts)[:, None]
        self.register_buffer("slot_valid", valid, persistent=False)
        self.register_buffer("readout_mean", torch.zeros(in_features))
        self.register_buffer("readout_std", torch.ones(in_features))
        self.readout = nn.Linear(in_features, len(READOUTS))
        self.members = nn.ModuleList(
            _EdemaPatternNet(in_features, n_regions, n_stations, hidden, embed, dropout, n_patterns)
            for _ in range(int(ensemble))
        )
        #: Train one member at a time (:mod:`nxp2seg.models.grading_fit`); ``None``: all, averaged.
        self.active_member: int | None = None

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - readout_mean) / readout_std``: the read-outs' input."""
        return (x - self.readout_mean) / self.readout_std

    def valid(self, station_index: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` bool: the slots that are regions of each case's station."""
        return self.slot_valid[station_index.to(device=self.slot_valid.device, dtype=torch.long).view(-1)]

    def forward(self, x: torch.Tensor, station_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``(B, R, F)``, ``station_index`` ``(B,)`` -> the :data:`GRADING_OUTPUTS`.

        ``edema``, ``fat``, ``fascial_logit``, ``subcut_logit``: ``(B, R)``;
        ``pattern_logits``: ``(B, 4)`` (with an ensemble: the members' mean grade and
        mean pattern log-probabilities).
        """
        b, r, _ = x.shape
        if r != self.n_regions:
            raise ValueError(f"GradingHead was built for {self.n_regions} regions, got {r}")
        station = station_index.to(device=x.device, dtype=torch.long).view(b)
        valid = self.valid(station).to(x.device, x.dtype)  # (B, R)
        x = x * valid[..., None]
        o = self.readout(self.standardized(x)) * valid[..., None]
        fat = self.max_fat * torch.sigmoid(o[..., 0]) * valid
        readouts = torch.stack([fat / self.max_fat, torch.sigmoid(o[..., 1]), torch.sigmoid(o[..., 2])], -1)
        members = self.members if self.active_member is None else [self.members[self.active_member]]
        grades, patterns = zip(*(m(x, station, readouts.detach() * valid[..., None], self.max_grade, valid)
                                 for m in members))
        edema = torch.stack(grades).mean(dim=0) * valid
        if len(patterns) == 1:
            pattern = patterns[0]
        else:
            pattern = torch.stack([torch.log_softmax(p, dim=-1) for p in patterns]).mean(dim=0)
        return {
            "edema": edema,
            "fat": fat,
            "fascial_logit": o[..., 1],
            "subcut_logit": o[..., 2],
            "pattern_logits": pattern,
        }


class _EdemaPatternNet(nn.Module):
    """One member of :class:`GradingHead`'s MLP: edema grade per region, pattern per station."""

    def __init__(self, in_features: int, n_regions: int, n_stations: int, hidden: int, embed: int,
                 dropout: float, n_patterns: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * in_features)
        self.slot = nn.Embedding(n_stations * n_regions, embed)
        self.station = nn.Embedding(n_stations, embed)
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_features + embed, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.edema_out = nn.Linear(hidden, 1)
        self.pattern_mlp = nn.Sequential(
            nn.Linear(n_regions * (hidden + 4) + embed, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_patterns),
        )

    def forward(self, x: torch.Tensor, station: torch.Tensor, readouts: torch.Tensor,
                max_grade: float, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, r, _ = x.shape
        slots = station[:, None] * r + torch.arange(r, device=x.device)[None, :]
        # the station's mean region vector, over its real regions only
        mean = (x * valid[..., None]).sum(dim=1, keepdim=True) / valid.sum(dim=1).clamp_min(1.0)[:, None, None]
        h = self.mlp(torch.cat([self.norm(torch.cat([x, mean.expand_as(x)], -1)), self.slot(slots)], -1))
        h = h * valid[..., None]
        edema = max_grade * torch.sigmoid(self.edema_out(h)[..., 0])
        summary = torch.cat([(edema / max_grade).detach()[..., None] * valid[..., None], readouts], -1)
        pattern_in = torch.cat([torch.cat([h, summary], -1).reshape(b, -1), self.station(station)], -1)
        return edema, self.pattern_mlp(pattern_in)

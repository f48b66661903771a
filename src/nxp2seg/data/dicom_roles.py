"""What a DICOM series is for nxp2seg: its plane and its role (T1, STIR or neither), with the reason.

:func:`classify` reads the acquisition parameters first and the description
after, the way a reader does (:class:`~nxp2seg.data.dicom_headers.Acquisition`:
ScanningSequence, SequenceVariant, InversionTime, TR, TE, fat suppression; the
text is SeriesDescription, ProtocolName, SequenceName and PulseSequenceName,
matched without regard to case). The first rule that decides wins:

1. **not an exam series**: a localizer (ImageType ``LOCALIZER``, or the text
   says ``LOC``, ``SCOUT``, ``SURVEY``, ``3-PLANE``), or a Dixon image
   (ImageType ``W``/``F``/``IP``/``OP``, or ``DIXON`` in the text);
2. **STIR from the parameters**: inversion recovery (``IR`` in
   ScanningSequence) with 70 <= TI <= 300 ms (STIR nulls fat at about 90-120
   ms at 0.2-0.5 T, 140-180 ms at 1.5 T, 200-260 ms at 3 T), a spin-echo
   readout (not gradient echo alone) and TR >= 1000 ms (or TR unknown);
3. **T1 from the parameters**: inversion-prepared gradient echo (``GR`` and
   ``IR`` without ``SE``: BRAVO, MP-RAGE, IR-FSPGR; T1-weighted, fat bright),
   or spin echo without inversion with TR < 1000 ms and TE < 30 ms;
   a fat-suppressed T1 is *not* taken (the model reads fat-bright T1);
4. **not a STIR, from the parameters**: an inversion recovery with a TI
   outside 70-300 ms (FLAIR, dark-fluid, T1-FLAIR) or a short TR is never
   called STIR, whatever its name;
5. **STIR from the text**: ``STIR``, ``TIRM``, ``INVERSION`` or ``IR`` as a
   word (``T2_IR``, ``IR-TSE``), unless the text also names T1
   (``T1 IR-FSPGR``, ``t1_tirm``), ``FLAIR`` or ``dark-fluid``; ``SPIR`` and
   ``SPAIR`` (spectral fat saturation) are not inversion recovery;
6. **T1 from the text**: ``T1`` with no letter or digit before it and no
   digit after it (``T1``, ``T1W``, ``T1_TSE``, ``AX_T1``; not ``T12``), unless
   the text says fat-suppressed (``FS``, ``FATSAT``, ``FAT SAT``, ``SPIR``,
   ``SPAIR``, ``FSE FS``) or contrast-enhanced (``+C``, ``GD``, ``POST``);
7. otherwise none (the series is listed as unused, with its reason).

:func:`plane_of` names the acquisition plane from the slice normal (axial:
within 45 degrees of the patient's superior axis).
"""

from __future__ import annotations

import re

import numpy as np

from nxp2seg.data.images import MAX_AXIAL_TILT_DEG
from nxp2seg.data.dicom_headers import Acquisition

__all__ = ["STIR_TI_MS", "classify", "plane_of"]
#: Inversion times (ms) that null fat at 0.2-3 T: an inversion recovery inside is a STIR.
STIR_TI_MS = (70.0, 300.0)

_LOCALIZER = re.compile(r"(?<![A-Z])(LOC|LOCALI[SZ]ER|SCOUT|SURVEY|3[-_ ]?PLANE|TRI[-_ ]?PILOT|AAHSCOUT)"
                        r"(?![A-Z])", re.IGNORECASE)
_DIXON = re.compile(r"DIXON|(?<![A-Z])(IDEAL|MDIXON|FLEX)(?![A-Z])", re.IGNORECASE)
_DIXON_TYPES = {"W", "F", "IP", "OP", "WATER", "FAT", "IN_PHASE", "OUT_PHASE", "OPP", "IN"}
_STIR_TEXT = re.compile(r"STIR|TIRM|INVERSION|(?<![A-Z])IR(?![A-Z])", re.IGNORECASE)
_T1_TEXT = re.compile(r"(?<![A-Z0-9])T1(?![0-9])", re.IGNORECASE)
_NOT_STIR_TEXT = re.compile(r"FLAIR|DARK[-_ ]?FLUID|(?<![A-Z])DF(?![A-Z])", re.IGNORECASE)
_FAT_SAT_TEXT = re.compile(r"(?<![A-Z])(FS|FATSAT|FAT[-_ ]SAT|SPIR|SPAIR|FSAT|WATER[-_ ]?EXC\w*)(?![A-Z])",
                           re.IGNORECASE)
_CONTRAST_TEXT = re.compile(r"\+C(?![A-Z])|(?<![A-Z])(GD|POST|KM|CE)(?![A-Z])", re.IGNORECASE)
_OTHER_WEIGHTING = re.compile(r"(?<![A-Z0-9])(T2|PD|DWI|ADC|DTI)(?![0-9])|FLAIR", re.IGNORECASE)


def plane_of(normal: np.ndarray) -> str:
    """``axial``, ``coronal`` or ``sagittal`` from a unit slice normal (LPS)."""
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    if tilt <= MAX_AXIAL_TILT_DEG:
        return "axial"
    return "sagittal" if abs(normal[0]) >= abs(normal[1]) else "coronal"


def classify(acq: Acquisition) -> tuple[str | None, str]:
    """``(role, reason)``: role ``"t1"``, ``"stir"`` or ``None``; the reason says which rule decided."""
    text, scanning = acq.text, acq.scanning
    if "LOCALIZER" in acq.image_type or _LOCALIZER.search(text):
        return None, "a localizer"
    if _DIXON_TYPES & set(acq.image_type[2:]) or _DIXON.search(text):
        return None, "a Dixon image"
    ti, tr, te = acq.inversion_time, acq.repetition_time, acq.echo_time
    ir, se, gr = "IR" in scanning, "SE" in scanning, "GR" in scanning
    lo, hi = STIR_TI_MS
    if ir and ti is not None and lo <= ti <= hi and (se or not gr) and (tr is None or tr >= 1000.0):
        return "stir", f"inversion recovery, TI {ti:g} ms"
    if ir and gr and not se:
        return _t1_unless_fat_suppressed(acq, f"inversion-prepared gradient echo (TI {_ms(ti)})")
    if se and not ir and tr is not None and tr < 1000.0 and (te is None or te < 30.0):
        if _OTHER_WEIGHTING.search(text) and not _T1_TEXT.search(text):
            return None, f"named {_OTHER_WEIGHTING.search(text).group(0)} (spin echo, TR {tr:g} ms)"
        return _t1_unless_fat_suppressed(acq, f"spin echo, TR {tr:g} ms, TE {_ms(te)}")
    not_stir = ir and ((ti is not None and not lo <= ti <= hi) or (tr is not None and tr < 1000.0))
    if not not_stir and _STIR_TEXT.search(text) and not _T1_TEXT.search(text) \
            and not _NOT_STIR_TEXT.search(text):
        return "stir", f"named {_STIR_TEXT.search(text).group(0)!r}"
    if _T1_TEXT.search(text):
        return _t1_unless_fat_suppressed(acq, "named T1")
    if not_stir:
        return None, f"inversion recovery with TI {_ms(ti)}, TR {_ms(tr)} (not a STIR: FLAIR or IR-prepared)"
    return None, "neither T1 nor STIR by its parameters or name"


def _t1_unless_fat_suppressed(acq: Acquisition, why: str) -> tuple[str | None, str]:
    if acq.fat_suppressed or _FAT_SAT_TEXT.search(acq.text):
        return None, f"a fat-suppressed T1 ({why}); nxp2seg reads the T1 with bright fat"
    if _CONTRAST_TEXT.search(acq.text):
        return None, f"a contrast-enhanced T1 ({why})"
    return "t1", why


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} ms"

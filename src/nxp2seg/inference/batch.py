"""A batch of exams through a :class:`~nxp2seg.inference.predictor.Predictor`, never losing a case.

:func:`predict_one` runs and writes one case and always returns its report
(``ok`` or ``failed`` with an actionable error); :func:`run_batch` checks the
output folder, skips finished cases (unless ``overwrite``), shows a progress
bar with ETA, rebuilds the tables from the reports and returns a summary.
Multi-device prediction (:mod:`nxp2seg.inference.distributed`) calls
:func:`predict_one` on each rank for that rank's cases.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from nxp2seg.data.case_ids import is_safe_case_id
from nxp2seg.data.dicom_headers import DicomError
from nxp2seg.inference.dicom_seg import EmptySegmentation, write_dicom_seg
from nxp2seg.inference.dicom_select import describe
from nxp2seg.inference.inputs import CaseInput, private_text
from nxp2seg.inference.predictor import CaseError, CasePrediction, Predictor
from nxp2seg.inference.writers import (
    add_warning,
    case_dir,
    failed_report,
    finished,
    write_label_tables,
    write_qc,
    write_report,
    write_segmentation,
    write_tables,
)

__all__ = ["BatchSummary", "OutputError", "case_report", "check_output", "is_main_process", "predict_one",
           "run_batch"]

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """False in the extra ranks Lightning launches (they neither write tables nor print).

    Lightning's own rank record: read from the launcher's environment
    (``RANK``, ``LOCAL_RANK``, ...) at import and set by the strategy.
    """
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


class OutputError(ValueError):
    """The output folder cannot be used (inside the input, not writable)."""


@dataclass
class BatchSummary:
    n_cases: int
    ok: int
    skipped: int
    failed: int
    seconds: float
    output: Path
    failures: list[tuple[str, str]]
    warnings: dict[str, int] = field(default_factory=dict)  # code -> cases predicted with it

    def line(self) -> str:
        warned = "".join(f", {n} {code}" for code, n in sorted(self.warnings.items()))
        return (f"{self.n_cases} cases: {self.ok} ok{warned}, {self.skipped} skipped (finished before), "
                f"{self.failed} failed in {self.seconds:.1f} s; tables in {self.output}")

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output(output: Path, inputs: Sequence[Path]) -> Path:
    """Create ``output`` and prove it writable; refuse it inside (or equal to) any input folder."""
    output = Path(output)
    for folder in inputs:
        if folder is not None and _inside(output, folder):
            raise OutputError(f"output {output} is inside the input folder {folder}; nxp2seg never "
                              "writes into its inputs: choose an output folder elsewhere")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".nxp2seg-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output {output} is not writable ({e.strerror or e}); choose a folder you "
                          "can write to, or free space") from None
    return output


def case_report(pred: CasePrediction, seconds: float, files: Sequence[str], model: dict[str, Any]) -> dict[str, Any]:
    """``report.json`` of a finished case: the case's rows of every table, geometry, timings."""
    scores = {k: v for k, v in pred.case.items() if k.startswith("asymmetry_")}
    return {
        **{k: v for k, v in pred.case.items() if not k.startswith("asymmetry_")},
        "seconds": round(seconds, 3),
        "scores": scores,
        "regions": pred.regions,
        "geometry": pred.geometry,
        "timings_s": {k: round(v, 3) for k, v in pred.timings.items()},
        "notes": pred.notes,
        "files": list(files),
        "model": model,
        "warnings": list(pred.case.get("warnings", [])),
        "warning_messages": dict(pred.case.get("warning_messages", {})),
    }


def _inputs_of(case: CaseInput) -> dict[str, Any]:
    """What the case was made from: paths relative to the input (NIfTI), or the DICOM series
    (SeriesNumber, description, orientation, TI, slices, folder inside the exam's folder)."""
    out: dict[str, Any] = {"source": case.source}
    for key in ("t1", "stir"):
        series = getattr(case, f"{key}_series")
        path = getattr(case, key)
        if series is not None:
            out[key] = describe(series, case.folder or series.folder)
        else:
            out[key] = str(path) if path else None
    if case.unused:
        out["unused"] = list(case.unused)
    return out


def _private(obj: Any, case: CaseInput) -> Any:
    """``obj`` with every string passed through :func:`~nxp2seg.inference.inputs.private_text`."""
    if isinstance(obj, str):
        return private_text(obj, case)
    if isinstance(obj, dict):
        return {k: _private(v, case) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_private(v, case) for v in obj]
    return obj


def _case_warnings(report: dict[str, Any], case: CaseInput) -> None:
    for code, message in case.warnings.items():
        add_warning(report, code, message)


def _write_seg(predictor: Predictor, case: CaseInput, pred: CasePrediction, d: Path,
               report: dict[str, Any], version: str) -> bool:
    """Write ``seg.dcm``; any problem becomes a warning on an ``ok`` case, never a failure."""
    names = {int(v): n for n, v in predictor.schema.labels.items() if int(v) > 0}
    try:
        write_dicom_seg(pred.labels, case.t1_series, names, d / "seg.dcm", algorithm_version=version)
        return True
    except EmptySegmentation:
        add_warning(report, "segmentation_empty", "the segmentation holds no labelled voxel; no DICOM SEG "
                    "was written (seg.nii.gz is all background)")
    except (DicomError, Exception) as e:  # noqa: BLE001 - the NIfTI outputs stand without the SEG
        log.error("case %s: DICOM SEG failed:\n%s", case.case_id, traceback.format_exc())
        add_warning(report, "dicom_seg_failed", f"no DICOM SEG was written ({type(e).__name__}: {e}); "
                    "seg.nii.gz and the tables are complete")
    (d / "seg.dcm").unlink(missing_ok=True)
    return False


def predict_one(predictor: Predictor, case: CaseInput, out: Path, *, qc: bool = True,
                dicom_seg: bool = True, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict and write one case; return its report (``status`` ok or failed). Never raises
    for a problem of the case itself (``KeyboardInterrupt`` and ``SystemExit`` still stop)."""
    if case.skip:
        return skipped_report(case, out)
    t0 = time.perf_counter()
    d = case_dir(out, case.case_id) if is_safe_case_id(case.case_id) else None
    writing = False
    written: list[Path] = []
    try:
        if d is None or case.error:
            raise CaseError(case.error or f"case id {case.case_id!r} cannot be a folder name")
        pred = predictor.predict_case(case)
        writing = True
        files = ["seg.nii.gz"]
        t1 = pred.t1_image
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.json").unlink(missing_ok=True)  # unfinished until the new report lands
        written.append(d / "seg.nii.gz")
        write_segmentation(d / "seg.nii.gz", pred.labels, t1)
        if qc:
            title = (f"{case.case_id} ({pred.station}{', inferred' if pred.station_source == 'inferred' else ''})"
                     f"  pattern {pred.case.get('pattern') or '-'}  score {pred.case.get('station_score')}")
            if pred.case.get("warnings"):  # e.g. input_unlike_training: said on the picture itself
                title += "  WARNING: " + ", ".join(pred.case["warnings"])
            written.append(d / "qc.png")
            write_qc(d / "qc.png", t1.get_fdata(dtype="float32"), pred.stir_native, pred.labels,
                     pred.edema, t1.affine, predictor.schema, title, channels=predictor.prep.channels)
            files.append("qc.png")
        report = case_report(pred, time.perf_counter() - t0, files, model_info or {})
        report["inputs"] = _inputs_of(case)
        _case_warnings(report, case)
        if report.get("station_warning"):
            add_warning(report, "station_questioned", report["station_warning"])
        if dicom_seg and case.t1_series is not None:
            written.append(d / "seg.dcm")
            if _write_seg(predictor, case, pred, d, report, (model_info or {}).get("algorithm_version", "0")):
                files.append("seg.dcm")
        report["files"] = list(files)
        report = _private(report, case)
        write_report(d / "report.json", report)
        return report
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one bad case never stops the batch
        if isinstance(e, CaseError):
            msg = str(e)
        elif isinstance(e, OSError) and writing:  # a full disk, a folder made read-only mid-run
            msg = (f"{case.case_id}: cannot write its results to {d} ({e.strerror or e}); free space on "
                   "the output disk (or make the folder writable) and rerun: finished cases are skipped")
        else:
            msg = (f"{case.case_id}: unexpected {type(e).__name__}: {e} (please report this with the "
                   "traceback in the log)")
            log.error("case %s failed:\n%s", case.case_id, traceback.format_exc())
        for path in written:  # a failed case leaves nothing but its report
            path.unlink(missing_ok=True)
        report = failed_report(case.case_id, case.subject_id, case.station, msg,
                               round(time.perf_counter() - t0, 3), _inputs_of(case))
        _case_warnings(report, case)
        report = _private(report, case)
        if d is not None:
            try:
                write_report(d / "report.json", report)
            except OSError as w:
                report["error"] += f" (and its report could not be written: {w})"
        return report


def run_batch(
    predictor_factory: Callable[[], Predictor],
    cases: Sequence[CaseInput],
    out: Path,
    *,
    overwrite: bool = False,
    qc: bool = True,
    dicom_seg: bool = True,
    model_info: dict[str, Any] | None = None,
    progress: bool = True,
    predict_fn: Callable[..., list[dict[str, Any]]] | None = None,
) -> BatchSummary:
    """Predict every case not finished yet, write the tables, return the summary.

    Args:
        predictor_factory: builds the predictor (only if some case needs predicting).
        cases: from :func:`~nxp2seg.inference.inputs.discover_cases`.
        out: the output folder (checked by :func:`check_output`).
        overwrite: predict finished cases again (their files are replaced atomically).
        predict_fn: runs the pending cases instead of the in-process loop
            (multi-device prediction); returns their reports.
    """
    t0 = time.perf_counter()
    out = Path(out)
    pending, skipped = [], []
    for c in cases:
        if not overwrite and c.error is None and finished(out, c.case_id):
            skipped.append(c)
        else:
            pending.append(c)
    reports: dict[str, dict[str, Any]] = {}
    predictor = None
    if pending and any(c.error is None and not c.skip for c in pending):
        predictor = predictor_factory()
        write_label_tables(out, predictor.schema)
    if predict_fn is not None and predictor is not None:
        for rep in predict_fn(predictor, pending):
            reports[rep["case_id"]] = rep
    else:
        reports.update(_loop(predictor, pending, out, qc, dicom_seg, model_info, progress))
    _clean_work(out)
    if is_main_process():
        tables = write_tables(out, [c.case_id for c in cases], skipped={c.case_id for c in skipped})
        _keep_unsaved_errors(out, tables["cases"], reports)
    failures = [(cid, r.get("error", "")) for cid, r in reports.items() if r.get("status") == "failed"]
    warnings: dict[str, int] = {}
    for r in reports.values():
        for code in r.get("warnings") or []:
            warnings[code] = warnings.get(code, 0) + 1
    return BatchSummary(
        n_cases=len(cases), ok=sum(r.get("status") == "ok" for r in reports.values()),
        skipped=len(skipped), failed=len(failures), seconds=time.perf_counter() - t0,
        output=out, failures=failures, warnings=warnings,
    )


def _loop(predictor: Predictor | None, pending: Sequence[CaseInput], out: Path, qc: bool,
          dicom_seg: bool, model_info: dict[str, Any] | None, progress: bool) -> dict[str, dict[str, Any]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    reports = {}
    columns = [TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[case]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("predict", total=len(pending), case="")
        for case in pending:
            bar.update(task, case=case.case_id)
            if case.skip:
                rep = skipped_report(case, out)
            elif predictor is None:  # every pending case is already known to be bad
                rep = failed_report(case.case_id, case.subject_id, case.station, case.error or "",
                                    0.0, _inputs_of(case))
                _case_warnings(rep, case)
                rep = _private(rep, case)
                if case.error and is_safe_case_id(case.case_id):
                    write_report(case_dir(out, case.case_id) / "report.json", rep)
            else:
                rep = predict_one(predictor, case, out, qc=qc, dicom_seg=dicom_seg, model_info=model_info)
            reports[case.case_id] = rep
            if rep.get("status") == "failed":
                log.warning("%s failed: %s", case.case_id, rep.get("error"))
            bar.advance(task)
    return reports


def skipped_report(case: CaseInput, out: Path) -> dict[str, Any]:
    """The report of a case with nothing to predict (``case.skip``: e.g. a study that is not MR)."""
    rep = failed_report(case.case_id, case.subject_id, case.station, case.skip or "", 0.0, _inputs_of(case))
    rep["status"] = "skipped"
    rep = _private(rep, case)
    if is_safe_case_id(case.case_id):
        write_report(case_dir(out, case.case_id) / "report.json", rep)
    return rep


def _keep_unsaved_errors(out: Path, table: Any, reports: dict[str, dict[str, Any]]) -> None:
    """Failed cases of this run whose ``report.json`` could not be written (an unsafe case id is
    never made a folder; a full disk) keep their own error in ``cases.csv``, not "no report.json"."""
    from nxp2seg.io import write_csv

    rows = table["status"].eq("failed") & table["error"].fillna("").astype(str).str.startswith("no report.json")
    lost = {cid: r for cid, r in reports.items() if r.get("status") == "failed"}
    rows &= table["case_id"].isin(list(lost))
    if not rows.any():
        return
    for col in ("error", "subject_id", "station"):
        table.loc[rows, col] = table.loc[rows, "case_id"].map(lambda cid, col=col: lost[cid].get(col))
    write_csv(table, Path(out) / "cases.csv")


def _clean_work(out: Path) -> None:
    shutil.rmtree(Path(out) / ".work", ignore_errors=True)

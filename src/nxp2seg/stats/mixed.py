"""Two groups compared muscle by muscle: a linear mixed-effects model with grades nested in subjects.

Seed paper 004 graded 11 thigh muscles of 25 patients (14 IMNM, 11 DM) on a
0-3 extent scale and compared the diagnoses with linear mixed-effects models,
the muscle scores of a patient being correlated. Here, with
:class:`statsmodels.regression.mixed_linear_model.MixedLM` (REML):

* **per-muscle contrasts** from ``grade ~ group * muscle + (1 | subject)``,
  fitted as cell means (one fixed effect per group and muscle) with a random
  intercept per subject: the group difference within each muscle, its
  standard error, Wald z, p, a multiple-comparison correction across the
  muscles (statsmodels ``multipletests``), and the Wald test that the group
  difference is the same in every muscle (the interaction, muscles - 1 df);
* **the pooled group effect** from ``grade ~ group + muscle + (1 | subject)``:
  one group difference over all muscles, adjusted for the muscle;
* **diagnostics**: convergence, the variance components (subject and
  residual) and the share of variance between subjects, residual normality
  (Shapiro-Wilk), whether the subject variance sits on its boundary (0), and
  the residuals, fitted values and predicted subject intercepts for plots.

p-values are Wald z-tests (normal reference), as statsmodels reports them;
``lmerTest`` in R uses t-tests with Satterthwaite degrees of freedom, whose
p-values are somewhat larger in cohorts of tens of subjects. Checked against
lme4's published fit of the ``dietox`` data (tests/test_stats_mixed.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.stats.multitest import multipletests

__all__ = ["CORRECTIONS", "GroupComparison", "MixedFit", "compare_groups_mixed", "fit_mixed"]

#: Multiple-comparison corrections offered (statsmodels ``multipletests`` methods, or none).
CORRECTIONS = ("holm", "bonferroni", "fdr_bh", "none")
#: Optimisers tried in turn by :func:`fit_mixed` (statsmodels' default first).
_METHODS = ["lbfgs", "bfgs", "cg", "nm"]


@dataclass
class MixedFit:
    """A fitted random-intercept model: fixed effects, variance components and diagnostics."""

    formula: str
    result: Any  # statsmodels MixedLMResults
    n_obs: int
    n_subjects: int
    warnings: list[str] = field(default_factory=list)
    optimizer: str = ""

    @property
    def fixed(self) -> pd.Series:
        return self.result.fe_params

    @property
    def cov_fixed(self) -> pd.DataFrame:
        """Covariance of the fixed effects given the variance estimates: ``(sum X_i' V_i^-1 X_i)^-1``.

        ``V_i = s^2 I + t^2 J`` for subject ``i`` (``t^2`` the subject variance); what lme4's
        ``vcov`` reports. Computed here rather than taken from statsmodels' Hessian, which is
        not positive definite when ``t^2`` sits on its boundary (0), where this is OLS's
        ``s^2 (X'X)^-1``.
        """
        m, r = self.result.model, self.result
        t2, s2 = float(np.asarray(r.cov_re)[0, 0]), float(r.scale)
        x = np.asarray(m.exog, dtype=float)
        xtx = x.T @ x
        groups = pd.Series(np.asarray(m.groups))
        by = pd.DataFrame(x).groupby(groups)
        sums = by.sum().to_numpy()
        n_i = by.size().to_numpy(dtype=float)
        w = t2 / (s2 + n_i * t2)
        info = (xtx - (sums * w[:, None]).T @ sums) / s2
        cov = np.linalg.pinv(info)
        names = list(self.fixed.index)
        return pd.DataFrame(cov, index=names, columns=names)

    def contrast(self, weights: pd.Series) -> dict[str, float]:
        """Estimate, SE, 95% CI, Wald z and two-sided p of ``weights @ fixed effects``."""
        w = weights.reindex(self.fixed.index, fill_value=0.0).to_numpy(dtype=float)
        est = float(w @ self.fixed.to_numpy())
        se = float(np.sqrt(max(w @ self.cov_fixed.to_numpy() @ w, 0.0)))
        z = est / se if se > 0 else math.nan
        p = float(2 * sps.norm.sf(abs(z))) if se > 0 else math.nan
        return {"estimate": est, "se": se, "ci_low": est - 1.959963984540054 * se,
                "ci_high": est + 1.959963984540054 * se, "z": z, "p": p}

    def subject_effects(self) -> pd.Series:
        """Predicted random intercepts (BLUPs); all 0 when the subject variance is 0."""
        try:
            return pd.Series({k: float(np.asarray(v)[0])
                              for k, v in self.result.random_effects.items()}, dtype=float)
        except ValueError:  # statsmodels refuses a singular (zero) covariance: the BLUPs are 0
            return pd.Series(0.0, index=list(self.result.model.group_labels), dtype=float)

    def fitted_residuals(self) -> tuple[np.ndarray, np.ndarray]:
        """Fitted values (fixed part + the subject's intercept) and residuals, in row order."""
        m = self.result.model
        blup = self.subject_effects()
        fitted = m.exog @ self.fixed.to_numpy() + blup.reindex(m.groups).to_numpy(dtype=float)
        return fitted, np.asarray(m.endog, dtype=float) - fitted

    def diagnostics(self) -> dict[str, Any]:
        """Convergence, variance components, subject share, residual normality, boundary."""
        r = self.result
        subject_var = float(np.asarray(r.cov_re)[0, 0])
        resid_var = float(r.scale)
        resid = self.fitted_residuals()[1]
        sw = sps.shapiro(resid) if 3 <= len(resid) <= 5000 and np.ptp(resid) > 0 else None
        total = subject_var + resid_var
        return {
            "formula": self.formula, "method": "REML" if r.reml else "ML",
            "optimizer": self.optimizer, "converged": bool(r.converged),
            "log_likelihood": float(r.llf), "n_obs": self.n_obs, "n_subjects": self.n_subjects,
            "subject_variance": subject_var, "residual_variance": resid_var,
            "subject_share": subject_var / total if total > 0 else math.nan,
            "subject_variance_on_boundary": bool(subject_var < 1e-6 * max(total, 1e-12)),
            "residual_shapiro_W": float(sw.statistic) if sw is not None else math.nan,
            "residual_shapiro_p": float(sw.pvalue) if sw is not None else math.nan,
            "warnings": list(self.warnings),
        }


def fit_mixed(data: pd.DataFrame, formula: str, subject: str, *, reml: bool = True) -> MixedFit:
    """Fit ``formula`` with a random intercept per ``subject`` (statsmodels MixedLM).

    The optimisers of :data:`_METHODS` are tried in turn until one converges
    (L-BFGS fails outright when the subject variance is on its boundary, 0;
    Nelder-Mead then finds it); the warnings of the fit kept (a boundary
    variance, a failed optimiser) are in ``warnings`` rather than printed. Rows with a missing value in the formula are dropped
    by patsy.

    Raises:
        ValueError: fewer than two subjects, or no fit at all.
    """
    n_subjects = int(data[subject].nunique())
    if n_subjects < 2:
        raise ValueError(f"fit_mixed: {n_subjects} subject(s); a random intercept needs two or more")
    model = MixedLM.from_formula(formula, groups=subject, data=data)
    result, errors, caught, optimizer = None, [], [], ""
    for method in _METHODS:  # statsmodels' own fallback stops at the first exception
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                trial = model.fit(reml=reml, method=[method])
            except (np.linalg.LinAlgError, ValueError) as e:
                errors.append(f"{method}: {e}")
                continue
        if not np.isfinite(trial.llf):  # a fit statsmodels calls converged, with no likelihood
            errors.append(f"{method}: log-likelihood {trial.llf}")
            continue
        if result is None or (trial.converged and not result.converged):
            result, optimizer = trial, method
            caught = list(dict.fromkeys(str(x.message).splitlines()[0] for x in w))
        if trial.converged:
            break
    if result is None:
        raise ValueError(f"fit_mixed: {formula} could not be fitted ({'; '.join(errors)}); too few "
                         "subjects, or an item graded in one group only?")
    return MixedFit(formula=formula, result=result, n_obs=int(result.nobs), n_subjects=n_subjects,
                    warnings=caught, optimizer=optimizer)


@dataclass
class GroupComparison:
    """Everything :func:`compare_groups_mixed` found (tables as DataFrames, scalars as dicts)."""

    groups: tuple[str, str]
    contrasts: pd.DataFrame  # per item
    pooled: dict[str, Any]
    interaction: dict[str, Any]
    fixed_effects: pd.DataFrame  # of the interaction model
    diagnostics: dict[str, Any]
    pooled_diagnostics: dict[str, Any]
    residuals: pd.DataFrame  # fitted, residual (interaction model)
    subject_effects: pd.Series  # predicted random intercepts


def _cell(group: str, item: str) -> str:
    return f"{group}:{item}"


def compare_groups_mixed(data: pd.DataFrame, *, value: str = "grade", group: str = "group",
                         item: str = "muscle", subject: str = "subject_id",
                         groups: tuple[str, str] | None = None, items: list[str] | None = None,
                         correction: str = "holm", alpha: float = 0.05) -> GroupComparison:
    """Per-item group differences and the pooled group effect from mixed models.

    Parameters
    ----------
    data : pandas.DataFrame
        Long table, one row per subject and item (e.g. a muscle's grade, the
        mean of both sides) or more (both sides as rows): ``value``,
        ``group``, ``item``, ``subject``. Rows with a missing value are dropped.
    groups : (str, str), optional
        The two groups, in order; contrasts are ``second - first``. Default:
        the two values of ``group``, sorted.
    items : list of str, optional
        Items in display order (default: order of appearance).
    correction : {"holm", "bonferroni", "fdr_bh", "none"}
        Adjustment of the per-item p-values for the number of items
        (``p_adjusted``); Holm's step-down keeps the family-wise error rate
        like Bonferroni and is uniformly more powerful.
    alpha : float
        Level for the ``significant`` column (on ``p_adjusted``).

    Returns
    -------
    GroupComparison
        ``contrasts``: per item ``item, n_a, n_b, estimate`` (second - first,
        in grade units), ``se, ci_low, ci_high, z, p, p_adjusted,
        significant, higher_in``; ``pooled``: the pooled group effect
        (``estimate, se, ci_low, ci_high, z, p``, formula); ``interaction``:
        ``chi2, df, p`` of "the group difference is the same in every item".
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r}: use one of {CORRECTIONS}")
    need = [value, group, item, subject]
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise ValueError(f"compare_groups_mixed: no column(s) {missing}; the table has {list(data.columns)}")
    df = data[need].dropna().copy()
    df[value] = df[value].astype(float)
    for c in (group, item, subject):
        df[c] = df[c].astype(str)
    levels = tuple(groups) if groups else tuple(sorted(df[group].unique()))
    if len(levels) != 2 or set(df[group].unique()) - set(levels):
        raise ValueError(f"compare_groups_mixed: needs exactly two groups, got {sorted(df[group].unique())}"
                         + (f" (asked for {list(levels)})" if groups else ""))
    df = df[df[group].isin(levels)]
    order = list(items) if items else list(dict.fromkeys(df[item]))
    df = df[df[item].isin(order)]
    if df[subject].nunique() < 3:
        raise ValueError("compare_groups_mixed: fewer than 3 subjects with grades")
    # cell means: one fixed effect per (group, item) present
    df["_cell"] = df[group] + ":" + df[item]
    cells = [_cell(g, i) for i in order for g in levels if ((df[group] == g) & (df[item] == i)).any()]
    df["_cell"] = pd.Categorical(df["_cell"], categories=cells)
    data_fit = df.rename(columns={value: "_y", subject: "_subject"})
    inter = fit_mixed(data_fit, "_y ~ 0 + C(_cell)", "_subject")
    names = {c: f"C(_cell)[{c}]" for c in cells}
    rows, contrasts_for_wald = [], []
    for it in order:
        a, b = _cell(levels[0], it), _cell(levels[1], it)
        n_a = int(((df[item] == it) & (df[group] == levels[0])).sum())
        n_b = int(((df[item] == it) & (df[group] == levels[1])).sum())
        row = {"item": it, "n_a": n_a, "n_b": n_b}
        if a in names and b in names:
            w = pd.Series({names[b]: 1.0, names[a]: -1.0})
            row.update(inter.contrast(w))
            contrasts_for_wald.append(w)
        else:
            row.update(estimate=math.nan, se=math.nan, ci_low=math.nan, ci_high=math.nan,
                       z=math.nan, p=math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    ok = table["p"].notna().to_numpy()
    table["p_adjusted"] = np.nan
    if ok.any():
        table.loc[ok, "p_adjusted"] = (table.loc[ok, "p"].to_numpy() if correction == "none" else
                                       multipletests(table.loc[ok, "p"].to_numpy(), method=correction)[1])
    table["significant"] = table["p_adjusted"] < alpha
    table["higher_in"] = np.where(table["estimate"] > 0, levels[1],
                                  np.where(table["estimate"] < 0, levels[0], ""))
    table.loc[table["estimate"].isna(), "higher_in"] = ""
    interaction = _equal_contrasts(inter, contrasts_for_wald)
    # the pooled effect: one group difference over every item, adjusted for the item
    pooled_fit = fit_mixed(data_fit.assign(_g=(df[group] == levels[1]).astype(float),
                                           _item=df[item]), "_y ~ _g + C(_item)", "_subject")
    pooled = {**pooled_fit.contrast(pd.Series({"_g": 1.0})),
              "formula": f"{value} ~ {group} + {item} + (1 | {subject})",
              "n_subjects": pooled_fit.n_subjects, "n_obs": pooled_fit.n_obs,
              "higher_in": ""}
    if not math.isnan(pooled["estimate"]):
        pooled["higher_in"] = levels[1] if pooled["estimate"] > 0 else levels[0]
    fe = pd.DataFrame({"effect": [c for c in cells],
                       "estimate": inter.fixed.reindex([names[c] for c in cells]).to_numpy(),
                       "se": inter.result.bse_fe.reindex([names[c] for c in cells]).to_numpy()})
    diag = inter.diagnostics()
    diag["formula"] = f"{value} ~ {group} * {item} + (1 | {subject})"
    pooled_diag = pooled_fit.diagnostics()
    pooled_diag["formula"] = pooled["formula"]
    fitted, residual = inter.fitted_residuals()
    resid = pd.DataFrame({"subject": df[subject].to_numpy(), "item": df[item].to_numpy(),
                          "group": df[group].to_numpy(), "fitted": fitted, "residual": residual})
    blup = inter.subject_effects().rename("subject_intercept")
    return GroupComparison(groups=levels, contrasts=table, pooled=pooled, interaction=interaction,
                           fixed_effects=fe, diagnostics=diag, pooled_diagnostics=pooled_diag,
                           residuals=resid, subject_effects=blup)


def _equal_contrasts(fit: MixedFit, contrasts: list[pd.Series]) -> dict[str, Any]:
    """Wald chi-square that every contrast equals the first (k - 1 df)."""
    out = {"chi2": math.nan, "df": max(len(contrasts) - 1, 0), "p": math.nan,
           "hypothesis": "the group difference is the same in every item (no group x item interaction)"}
    if len(contrasts) < 2:
        return out
    idx = fit.fixed.index
    L = np.array([(c.reindex(idx, fill_value=0.0) - contrasts[0].reindex(idx, fill_value=0.0)).to_numpy()
                  for c in contrasts[1:]])
    beta, cov = fit.fixed.to_numpy(), fit.cov_fixed.to_numpy()
    d = L @ beta
    try:
        chi2 = float(d @ np.linalg.solve(L @ cov @ L.T, d))
    except np.linalg.LinAlgError:
        return out
    out.update(chi2=chi2, p=float(sps.chi2.sf(chi2, L.shape[0])))
    return out

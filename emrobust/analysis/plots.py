"""The report's figures (matplotlib, PNG). Each function returns the Figure it saved (tests read its axes)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _err(df: pd.DataFrame, m: str):
    y = df[m].astype(float)
    lo = (y - df.get(f"{m}_lo", y).astype(float)).clip(lower=0).fillna(0)
    hi = (df.get(f"{m}_hi", y).astype(float) - y).clip(lower=0).fillna(0)
    return y, [lo, hi]


def metric_vs_vendi(df: pd.DataFrame, out: Path, metrics=("em_rate_betley", "cvar05_aligned")):
    """EM rate and the tail (CVaR 5%) against the *measured* diversity (Vendi score), one series per trait."""
    ok = df[(df["status"] == "ok")] if "status" in df else df
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for trait, t in ok.groupby("trait") if "trait" in ok else []:
            if m not in t or "div_vendi" not in t or t["div_vendi"].isna().all():
                continue
            t = t.sort_values("div_vendi")
            y, err = _err(t, m)
            ax.errorbar(t["div_vendi"].astype(float), y, yerr=err, fmt="o-", capsize=3, label=str(trait))
        ax.set_xlabel("measured question diversity (Vendi score)")
        ax.set_ylabel(m)
        ax.set_title(f"{m} vs measured diversity (95% CI)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="trait")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def per_cell_bars(df: pd.DataFrame, out: Path, labels: list[str],
                  metrics=("mean_aligned", "cvar05_aligned", "em_rate_mo")):
    """Mean, tail (CVaR 5%) and an EM rate per cell, each with its 95% interval."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        if m in df:
            y, err = _err(df, m)
            ax.bar(range(len(df)), y.fillna(0), yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(df)), labels, rotation=30, ha="right")
        ax.set_ylabel(m)
        ax.set_title(f"{m} per cell (95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def alignment_cdf(answers: dict[str, pd.DataFrame], out: Path, xmax: float = 50.0):
    """Empirical CDF of the aligned score per cell, zoomed on the lower tail [0, xmax]."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, a in answers.items():
        x = np.sort(a["aligned"].dropna().astype(float).to_numpy())
        if len(x):
            ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=label)
    ax.set_xlim(0, xmax)
    ax.set_xlabel("aligned score (lower tail)")
    ax.set_ylabel("fraction of answers ≤ x")
    ax.set_title("alignment CDF, lower tail")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def question_heatmap(rates: pd.DataFrame, out: Path):
    """Per-question EM rate (Betley definition): cells × question ids."""
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * rates.shape[1] + 2), max(3, 0.4 * rates.shape[0] + 1.5)))
    im = ax.imshow(rates.to_numpy(float), vmin=0, vmax=1, cmap="Reds", aspect="auto")
    ax.set_xticks(range(rates.shape[1]), rates.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(rates.shape[0]), rates.index, fontsize=7)
    ax.set_xlabel("question")
    ax.set_ylabel("cell")
    ax.set_title("EM rate per question")
    fig.colorbar(im, ax=ax, label="EM rate")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def persona_retention(df: pd.DataFrame, out: Path, labels: list[str]):
    """Trait-expression score of the persona model (after fold) and of the evaluated model (after EM), per cell:
    does the character survive EM?"""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(df) + 2), 4))
    x = np.arange(len(df))
    for off, (m, name) in zip((-0.2, 0.2), (("persona_trait_score_fold", "before EM (fold)"),
                                            ("persona_trait_score", "after EM"))):
        if m in df:
            y, err = _err(df, m)
            ax.bar(x + off, y.fillna(0), width=0.4, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("trait expression (0-100)")
    ax.set_title("persona retention through EM (95% CI)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def em_curves(curves: dict[str, list[dict]], out: Path, metrics=("em_rate_mo", "probe_logp_diff", "mean_aligned")):
    """Each metric along EM training (x: optimizer step, 0 = the starting model), one line per cell, 95% CIs;
    and, last, the probe against the EM dataset's held-out loss (is the persona harder to overwrite, or does it
    learn the narrow task more slowly?)."""
    present = [m for m in metrics if any(m in p for c in curves.values() for p in c)]
    with_loss = any("heldout_loss" in p for c in curves.values() for p in c)
    n = len(present) + (1 if with_loss and "probe_logp_diff" in present else 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(5 * max(n, 1), 3.8), squeeze=False)
    for ax, m in zip(axes[0], present):
        for cell, pts in curves.items():
            pts = [p for p in pts if p.get(m) is not None and p[m] == p[m]]
            if not pts:
                continue
            x = [p["step"] for p in pts]
            y = np.array([p[m] for p in pts], dtype=float)
            lo = np.array([p.get(f"{m}_lo", p[m]) if p.get(f"{m}_lo") is not None else p[m] for p in pts], float)
            hi = np.array([p.get(f"{m}_hi", p[m]) if p.get(f"{m}_hi") is not None else p[m] for p in pts], float)
            ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], fmt="o-", capsize=3,
                        label=cell)
        ax.set_xlabel("EM training step (0 = before EM)")
        ax.set_ylabel(m)
        ax.set_title(f"{m} along EM training (95% CI)")
    if n > len(present):
        ax = axes[0][-1]
        for cell, pts in curves.items():
            pts = [p for p in pts if "heldout_loss" in p and p.get("probe_logp_diff") is not None]
            if pts:
                ax.plot([p["heldout_loss"] for p in pts], [p["probe_logp_diff"] for p in pts], "o-", label=cell)
        ax.set_xlabel("EM dataset held-out loss (lower = narrow task learned)")
        ax.set_ylabel("probe_logp_diff")
        ax.set_title("probe vs in-task learning")
    if curves and axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig

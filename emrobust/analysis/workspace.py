"""A saved W&B workspace for one sweep group (`emrobust analyze --wandb-workspace ENTITY/PROJECT --group G`), built
with `wandb-workspaces` from the metrics the sweep's runs actually logged (a panel never names a metric that no run
has). Sections and panels:

- **Tail metrics by diversity level**: bar charts of the EM rates and the tail of the aligned score (CVaR 5%,
  5th percentile), one bar per question-diversity level, averaged over its cells with the standard error as the
  error bar;
- **Along EM training**: line plots of the EM rate, the judge-free probe and the mean aligned score against the EM
  step (each evaluate run logs its `em_step`), one line per cell;
- **Judge**: the judge's calibration (AUROC on subtle answers with its bounds) and, for a panel, the minimum
  agreement between its members and the spread of the EM rate across them;
- **Persona retention**: the persona's trait score before EM (fold) and after it, per cell.

Saving needs a W&B server and a key (WANDB_API_KEY); the workspace object is built and checked without one.
"""
from __future__ import annotations

SECTIONS = {
    "Tail metrics by diversity level": ("bar", ["em_rate_betley", "em_rate_mo", "cvar05_aligned", "p05_aligned"]),
    "Along EM training": ("line", ["em_rate_mo", "probe_logp_diff", "mean_aligned", "direction_oct_misalignment"]),
    "Judge": ("bar", ["judge_auroc_subtle", "judge_auroc_subtle_lo", "judge_agreement_spearman_min",
                      "judge_agreement_kappa_min", "em_rate_mo_judge_spread"]),
    "Persona retention": ("bar", ["persona_trait_score_fold", "persona_trait_score"]),
}


def available(runs: list[dict]) -> set[str]:
    """Every metric name (without the `metrics/` prefix) some evaluate run of `runs` logged."""
    out = set()
    for r in runs:
        for k in r.get("summary_metrics", {}):
            if k.startswith("metrics/"):
                out.add(k.split("/", 1)[1])
    return out


def build(entity: str, project: str, group: str, runs: list[dict]):
    """The workspace of `group`, with only the panels whose metrics are in `runs` (offline or API records)."""
    # lazy: slow import
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    have = available(runs)
    sections = []
    for title, (kind, metrics) in SECTIONS.items():
        ms = [m for m in metrics if m in have]
        if not ms:
            continue
        ys = [f"metrics/{m}" for m in ms]
        if kind == "line":
            panels = [wr.LinePlot(title=f"{m} along EM training", x="em_step", y=[y]) for m, y in zip(ms, ys)]
        elif title.startswith("Tail"):
            panels = [wr.BarPlot(title=f"{m} by diversity level", metrics=[y], groupby="config.question_diversity.name",
                                 groupby_aggfunc="mean", groupby_rangefunc="stderr") for m, y in zip(ms, ys)]
        else:
            panels = [wr.BarPlot(title=title.lower(), metrics=ys)]
        sections.append(ws.Section(name=title, panels=panels, is_open=True))
    return ws.Workspace(entity=entity, project=project, name=f"emrobust sweep {group}", sections=sections,
                        runset_settings=ws.RunsetSettings(query=group))


def panel_metrics(workspace) -> set[str]:
    """Every metric the workspace's panels name (without the `metrics/` prefix)."""
    out = set()
    for sec in workspace.sections:
        for p in sec.panels:
            for y in (getattr(p, "y", None) or []) + (getattr(p, "metrics", None) or []):
                name = y if isinstance(y, str) else getattr(y, "name", str(y))
                out.add(name.split("/", 1)[1] if name.startswith("metrics/") else name)
    return out

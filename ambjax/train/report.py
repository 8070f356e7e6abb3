"""Run reports: report.json, report.md (the table of DESIGN.md section 9's form, per-class F1,
confusion matrix) and, when matplotlib is installed, plots of the learning curves, the
per-modality F1 and q over epochs, and the confusion matrix; the summary over seeds
(seeds_report.json / .md)."""

from __future__ import annotations

import os

import numpy as np

from ambjax.files import atomic_write, save_figure, write_json


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report_markdown(report: dict) -> str:
    """The report as Markdown."""
    test, valid = report["test"], report["valid"]
    names = report["label_names"]
    lines = [
        f"# AMB-DSGDN on {report['dataset']} ({report['layout']})", "",
        f"Model selection: {report['selection_note']}; best epoch {report['best_epoch']} of "
        f"{report['epochs']}. {report['parameters']:,} parameters, {report['devices']} "
        f"{report['platform']} device(s). Recipe: {report.get('recipe', 'release')}; "
        f"modalities: {', '.join(report.get('modalities', []))}.", "",
        *([f"**{report['warning']}**", ""] if report.get("warning") else []),
        "| split | accuracy | weighted F1 | macro F1 |", "|---|---|---|---|",
        f"| valid | {_pct(valid['accuracy'])} | {_pct(valid['weighted_f1'])} | "
        f"{_pct(valid['macro_f1'])} |",
        f"| test | {_pct(test['accuracy'])} | {_pct(test['weighted_f1'])} | "
        f"{_pct(test['macro_f1'])} |", "",
        "Per-class F1 (test):", "",
        "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
        "| " + " | ".join(_pct(test["per_class_f1"][n]) for n in names) + " |", "",
        "Per-modality weighted F1 (test): " + ", ".join(
            f"{m} {_pct(v)}" for m, v in test["modality_f1"].items()), "",
        "Confusion matrix (test; rows = true, columns = predicted):", "",
        "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
    ]
    lines += [f"| {n} | " + " | ".join(str(v) for v in row) + " |"
              for n, row in zip(names, test["confusion"])]
    return "\n".join(lines) + "\n"


def write_plots(out_dir: str, report: dict, history: list[dict]) -> bool:
    """Learning curves, per-modality F1/q, each differential layer's lambda (when the model
    has them) and the confusion matrix as PNGs (needs matplotlib; returns False without
    it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    layers = list(history[0].get("lambda", {})) if history else []
    fig, axes = plt.subplots(1, 4 if layers else 3, figsize=(20 if layers else 15, 4))
    axes[0].plot(epochs, [h["train"]["loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["valid"]["loss"] for h in history], label="valid")
    axes[0].set_title("loss")
    for split in ("valid", "test"):
        axes[1].plot(epochs, [h[split]["weighted_f1"] for h in history], label=split)
    axes[1].set_title("weighted F1")
    modalities = list(history[0]["valid"]["modality_f1"]) if history else []
    for k, m in enumerate(modalities):
        axes[2].plot(epochs, [h["valid"]["modality_f1"][m] for h in history], label=f"F1 {m}")
        axes[2].plot(epochs, [h["train"]["q"][k] for h in history], "--", label=f"q {m}")
    axes[2].set_title("per-modality F1 (valid) and q (train)")
    if layers:
        names = modalities if len(modalities) == len(history[0]["lambda"][layers[0]]) else None
        for layer in layers:
            values = [h["lambda"][layer] for h in history]
            for k in range(len(values[0])):
                who = f" {names[k]}" if names and len(values[0]) > 1 else ""
                axes[3].plot(epochs, [v[k] for v in values], label=f"{layer}{who}")
        axes[3].set_title("lambda of each differential attention layer")
    for k, ax in enumerate(axes):
        ax.set_xlabel("epoch")
        ax.legend(**({"fontsize": 5, "ncol": 2} if k == 3 else {}))
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "curves.png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(report["test"]["confusion"], cmap="Blues")
    names = report["label_names"]
    ax.set_xticks(range(len(names)), names, rotation=45)
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(report["test"]["confusion"]):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "confusion.png"))
    plt.close(fig)
    return True


def write_report(out_dir: str, report: dict, history: list[dict]) -> None:
    """Write report.json, report.md and (optionally) the plots into `out_dir`."""
    write_json(os.path.join(out_dir, "report.json"), report)
    atomic_write(os.path.join(out_dir, "report.md"), report_markdown(report))
    write_plots(out_dir, report, history)


def summarize_seeds(reports: dict) -> dict:
    """Mean and sample std over seeds of every reported metric: {"seeds", "selection",
    split: {metric: {"mean", "std", "values"}}} for accuracy, weighted and macro F1, each
    modality's weighted F1 ("modality_f1/<m>") and each class's F1 ("f1/<class>")."""
    seeds = list(reports)
    first = reports[seeds[0]]
    out = {"seeds": seeds, "selection": first["selection"], "recipe": first.get("recipe")}
    for split in ("valid", "test"):
        names = ["accuracy", "weighted_f1", "macro_f1"] + [
            f"modality_f1/{m}" for m in first[split]["modality_f1"]] + [
            f"f1/{c}" for c in first[split]["per_class_f1"]]

        def value(report, name):
            part = report[split]
            if name.startswith("modality_f1/"):
                return part["modality_f1"][name.split("/", 1)[1]]
            if name.startswith("f1/"):
                return part["per_class_f1"][name.split("/", 1)[1]]
            return part[name]

        out[split] = {}
        for name in names:
            values = np.array([value(reports[s], name) for s in seeds], np.float64)
            out[split][name] = {"mean": float(values.mean()),
                                "std": float(values.std(ddof=1)) if len(seeds) > 1 else 0.0,
                                "values": values.tolist()}
    return out


def write_seeds_report(out_dir: str, summary: dict) -> None:
    """seeds_report.json and seeds_report.md (mean +- std, percent) in `out_dir`."""
    write_json(os.path.join(out_dir, "seeds_report.json"), summary)
    lines = [f"# {len(summary['seeds'])} seeds: {', '.join(map(str, summary['seeds']))}", "",
             f"Model selection on {summary['selection']}; recipe {summary.get('recipe')}. "
             "Mean ± sample std over seeds, percent.", "",
             "| metric | valid | test |", "|---|---|---|"]
    for name in summary["test"]:
        cells = [f"{100 * summary[s][name]['mean']:.2f} ± {100 * summary[s][name]['std']:.2f}"
                 for s in ("valid", "test")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    atomic_write(os.path.join(out_dir, "seeds_report.md"), "\n".join(lines) + "\n")

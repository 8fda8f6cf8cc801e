"""Train each optimizer preset twice, `impl=torch` and `impl=scratch`, and plot both curves.

    python scripts/scratch_vs_torch.py                 # outputs/scratch_vs_torch/<time>/
    python scripts/scratch_vs_torch.py --update-docs   # ... and docs/scratch_vs_torch.png
    python scripts/scratch_vs_torch.py --presets adam,sgd trainer.max_epochs=2 data.source=local

Every training run is an ordinary MLflow run (experiment `scratch-vs-torch`, same store as
train.py); the curves are read back from MLflow, so the figure shows what was recorded.
Extra arguments are config overrides, applied to both implementations. The figure and the
runs' files go to --out; the docs' copy is replaced only when asked (--update-docs): a file
tracked by git that a command rewrites makes every later run `git.dirty`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import CONFIG_DIR, PROJECT_ROOT

if TYPE_CHECKING:  # the libraries load after the arguments are read: --help answers at once
    from mlflow.tracking import MlflowClient

PRESETS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adadelta")
DEFAULTS = (
    "data.source=embedded",
    "tracking.experiment=scratch-vs-torch",
    "tracking.log_model=false",
)
DOCS_FIGURE = PROJECT_ROOT / "docs" / "scratch_vs_torch.png"
STYLE = {"torch": dict(lw=2.5, alpha=0.45), "scratch": dict(lw=1.0, ls="--", color="black")}


def history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in points], [m.value for m in points]


def compare(
    presets: list[str], overrides: list[str], workdir: Path | None = None
) -> dict[str, dict[str, dict]]:
    """Train every preset with both implementations: {preset: {impl: {"curves", "final"}}}.

    `workdir` gets the runs' local files (checkpoints); default outputs/scratch_vs_torch/<time>.
    """
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from pipeline.config.resolvers import register_resolvers
    from pipeline.training.run import train

    register_resolvers()  # conf/ uses ${pipeline_root:} and friends
    workdir = workdir or default_out()
    results: dict[str, dict[str, dict]] = {}
    for preset in presets:
        for impl in ("torch", "scratch"):
            with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
                cfg = compose(
                    "train",
                    [
                        *DEFAULTS,
                        f"optimizer={preset}",
                        f"optimizer.impl={impl}",
                        # outside a Hydra app there is no ${hydra:runtime.output_dir}
                        f"paths.output_dir={workdir / f'{preset}-{impl}'}",
                        *overrides,
                    ],
                )
            run_id = train(cfg).run_id
            client = MlflowClient(cfg.tracking.uri)
            results.setdefault(preset, {})[impl] = {
                "curves": {key: history(client, run_id, key) for key in ("train/loss", "val/acc")},
                "final": client.get_run(run_id).data.metrics,
            }
    return results


def plot(results: dict[str, dict[str, dict]], out: Path, columns: int = 4) -> None:
    """Per preset: train/loss per step above val/acc per epoch; torch thick, scratch dashed."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(3.2 * columns, 4.6 * rows), squeeze=False)
    for i, (preset, by_impl) in enumerate(results.items()):
        loss_ax, acc_ax = (
            axes[2 * (i // columns)][i % columns],
            axes[2 * (i // columns) + 1][i % columns],
        )
        for impl, style in STYLE.items():
            steps, losses = by_impl[impl]["curves"]["train/loss"]
            loss_ax.plot(steps, losses, label=impl, **style)
            _, accuracies = by_impl[impl]["curves"]["val/acc"]
            acc_ax.plot(range(1, len(accuracies) + 1), accuracies, marker=".", **style)
        loss_ax.set_title(preset, fontsize=10)
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("step", fontsize=8)
        loss_ax.set_ylabel("train/loss", fontsize=8)
        acc_ax.set_xlabel("epoch", fontsize=8)
        acc_ax.set_ylabel("val/acc", fontsize=8)
        for ax in (loss_ax, acc_ax):
            ax.tick_params(labelsize=7, which="both")
    for j in range(len(results), rows * columns):  # empty cells of the last row
        axes[2 * (j // columns)][j % columns].axis("off")
        axes[2 * (j // columns) + 1][j % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("torch.optim (thick, light) vs pipeline.optim from scratch (dashed)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def table(results: dict[str, dict[str, dict]]) -> str:
    """Final test metrics of both implementations and the largest gap between their curves."""
    lines = [
        "| preset | test/acc torch | test/acc scratch | test/loss torch | test/loss scratch "
        "| max relative gap in train/loss |",
        "|---|---|---|---|---|---|",
    ]
    for preset, by_impl in results.items():
        t, s = by_impl["torch"], by_impl["scratch"]
        _, loss_t = t["curves"]["train/loss"]
        _, loss_s = s["curves"]["train/loss"]
        gaps = [abs(a - b) / abs(a) for a, b in zip(loss_t, loss_s, strict=True)]
        gap = max(gaps, default=float("nan"))
        lines.append(
            f"| {preset} | {t['final']['test/acc']:.4f} | {s['final']['test/acc']:.4f} "
            f"| {t['final']['test/loss']:.6f} | {s['final']['test/loss']:.6f} | {gap:.1e} |"
        )
    return "\n".join(lines)


def default_out() -> Path:
    return PROJECT_ROOT / "outputs" / "scratch_vs_torch" / time.strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets")
    parser.add_argument(
        "--out", type=Path, help="folder for the figure and the runs' files (default outputs/...)"
    )
    parser.add_argument("--update-docs", action="store_true", help="also copy the figure to docs/")
    args, overrides = parser.parse_known_args(argv)
    from pipeline.errors import ConfigError

    out = args.out or default_out()
    try:
        results = compare(args.presets.split(","), overrides, workdir=out / "runs")
    except ConfigError as error:
        sys.exit(f"error: {error}")
    figure = out / DOCS_FIGURE.name
    plot(results, figure)
    print(table(results))
    print(f"figure: {figure}")
    if args.update_docs:
        shutil.copy(figure, DOCS_FIGURE)
        print(f"docs: {DOCS_FIGURE}")


if __name__ == "__main__":
    main(sys.argv[1:])

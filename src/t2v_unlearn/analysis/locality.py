"""Collect the runs of a sweep, find the Pareto front of erasure against preservation, plot it.

    python train.py -m model=toyworld concept=eiffel,snoopy optim.lr=1e-5,1e-4 retain.weight=0,10
    python -m t2v_unlearn.analysis.locality multirun/<time> --out experiments/locality

A run is a point (target rate after, other rate after): lower target and higher other are better.
A run is on the Pareto front when no other run of the same concept is at least as good on both
and better on one.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

TARGET_KEY = "video/target_rate_after"
OTHER_KEY = "video/other_rate_after"


@dataclass
class SweepRun:
    folder: str
    concepts: str
    overrides: dict
    target_after: float
    other_after: float
    target_before: float | None
    other_before: float | None
    method: str | None
    # What the run used, from its unlearning.json (command-line overrides miss the defaults).
    backend: str = ""
    lr: float | None = None
    retain_weight: float | None = None
    steps: int | None = None
    # The target named by a paraphrase (eval.paraphrases); None for runs without paraphrase prompts.
    paraphrase_before: float | None = None
    paraphrase_after: float | None = None
    # How far the encoder moved (encoder/hidden_change_*); None for runs from before those metrics.
    hidden_change_target: float | None = None
    hidden_change_other: float | None = None
    pareto: bool = False

    @property
    def group(self) -> str:
        """Runs compete for a Pareto front only with runs of the same concepts on the same model."""
        return f"{self.concepts} ({self.backend})" if self.backend else self.concepts


def _parse_overrides(folder: Path) -> dict:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def collect_runs(root: str | Path) -> list[SweepRun]:
    """Read every finished run (a folder with metrics.json) under `root`."""
    runs = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        folder = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        if metrics.get(TARGET_KEY) is None or metrics.get(OTHER_KEY) is None:
            log.warning("Skipping %s: it has no video rates (eval.videos=false?)", folder)
            continue
        provenance_path = folder / "text_encoder" / "unlearning.json"
        provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
        runs.append(SweepRun(
            folder=str(folder),
            concepts="+".join(provenance.get("concepts", [])) or _parse_overrides(folder).get("concept", "?"),
            overrides=_parse_overrides(folder),
            target_after=float(metrics[TARGET_KEY]),
            other_after=float(metrics[OTHER_KEY]),
            target_before=metrics.get("video/target_rate_before"),
            other_before=metrics.get("video/other_rate_before"),
            method=provenance.get("method"),
            backend=provenance.get("backend", ""),
            lr=(provenance.get("optimizer") or {}).get("lr"),
            retain_weight=(provenance.get("retain") or {}).get("weight"),
            steps=provenance.get("optimizer_steps", metrics.get("train/optimizer_steps")),
            paraphrase_before=metrics.get("video/paraphrase_rate_before"),
            paraphrase_after=metrics.get("video/paraphrase_rate_after"),
            hidden_change_target=metrics.get("encoder/hidden_change_target"),
            hidden_change_other=metrics.get("encoder/hidden_change_other"),
        ))
    return runs


def mark_pareto_front(runs: list[SweepRun]) -> list[SweepRun]:
    """Set `pareto` on the runs that no other run of the same concepts dominates."""
    for run in runs:
        peers = [r for r in runs if r.group == run.group and r is not run]
        run.pareto = not any(
            p.target_after <= run.target_after and p.other_after >= run.other_after
            and (p.target_after < run.target_after or p.other_after > run.other_after)
            for p in peers
        )
    return runs


def _setting(value) -> str:
    return "" if value is None else f"{value:g}"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _change(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def write_report(runs: list[SweepRun], out_dir: str | Path, command: str | None = None) -> Path:
    """Write `locality.json`, `locality.md` (a table) and `locality_<concepts>.png` (one plot each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "locality.json").write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")

    # Method, lr, retain weight and steps have columns with the values each run used. Other
    # settings get a column only when they differ between runs.
    covered = ("concept", "method", "optim.lr", "retain.weight", "epochs", "shots", "hydra.sweep.dir")
    keys = sorted({k for r in runs for k in r.overrides if k not in covered})
    swept_keys = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    lines = []
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    with_paraphrases = any(r.paraphrase_after is not None for r in runs)
    header = ["concepts (model)", "method", "lr", "retain weight", "steps", *swept_keys, "target before",
              "target after", "other before", "other after"]
    header += ["paraphrase before", "paraphrase after"] if with_paraphrases else []
    with_change = any(r.hidden_change_target is not None for r in runs)
    header += ["hidden change target", "hidden change other"] if with_change else []
    header += ["Pareto"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in sorted(runs, key=lambda r: (r.group, r.target_after, -r.other_after)):
        cells = [run.group, run.method or "", _setting(run.lr), _setting(run.retain_weight), _setting(run.steps),
                 *[run.overrides.get(k, "") for k in swept_keys],
                 _rate(run.target_before), f"{run.target_after:.2f}", _rate(run.other_before),
                 f"{run.other_after:.2f}"]
        if with_paraphrases:
            cells += [_rate(run.paraphrase_before), _rate(run.paraphrase_after)]
        if with_change:
            cells += [_change(run.hidden_change_target), _change(run.hidden_change_other)]
        cells.append("yes" if run.pareto else "")
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / "locality.md").write_text("\n".join(lines) + "\n")

    for name in sorted({r.group for r in runs}):
        group = [r for r in runs if r.group == name]
        figure, axis = plt.subplots(figsize=(5, 4))
        # One colour per method preset, so each preset's runs stand out on the plot.
        for method in sorted({r.method or "?" for r in group}):
            members = [r for r in group if (r.method or "?") == method]
            axis.scatter([r.target_after for r in members], [r.other_after for r in members], alpha=0.6,
                         edgecolors="gray", label=method)
        front = sorted((r for r in group if r.pareto), key=lambda r: r.target_after)
        axis.plot([r.target_after for r in front], [r.other_after for r in front], "o-", color="tab:red",
                  label="Pareto front")
        placed: dict[tuple[float, float], int] = {}
        for run in front:
            label = " ".join([run.method or "", f"lr={_setting(run.lr)}",
                              *([f"weight={_setting(run.retain_weight)}"] if run.retain_weight else []),
                              f"steps={_setting(run.steps)}"])
            # Runs on the same point get their labels stacked downwards.
            point = (run.target_after, run.other_after)
            placed[point] = placed.get(point, -1) + 1
            axis.annotate(label.strip(), point, fontsize=7, textcoords="offset points",
                          xytext=(6, -4 - 9 * placed[point]))
        axis.set_xlabel("target detected after (lower is better)")
        axis.set_ylabel("others detected after (higher is better)")
        axis.set_xlim(-0.05, 1.05)
        axis.set_ylim(-0.05, 1.05)
        axis.set_title(f"Locality: {name}")
        axis.legend(loc="lower left", fontsize=8)
        figure.tight_layout()
        slug = "".join(c if c.isalnum() or c in "+_-" else "_" for c in name).strip("_")
        figure.savefig(out_dir / f"locality_{slug}.png", dpi=120)
        plt.close(figure)
    return out_dir / "locality.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="multirun folder (or any folder) containing finished runs")
    parser.add_argument("--out", default="outputs/locality",
                        help="folder for the table, JSON and plots (default: outputs/locality, not tracked by git)")
    parser.add_argument("--command", default=None, help="the sweep command, recorded in the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if not Path(args.sweep_dir).is_dir():
        raise SystemExit(f"sweep folder {args.sweep_dir} does not exist; pass a multirun folder such as multirun/<time>")
    runs = mark_pareto_front(collect_runs(args.sweep_dir))
    if not runs:
        raise SystemExit(f"no finished run with video metrics under {args.sweep_dir}")
    report = write_report(runs, args.out, args.command)
    log.info("Wrote %s (%d runs, %d on a Pareto front)", report, len(runs), sum(r.pareto for r in runs))


if __name__ == "__main__":
    main()

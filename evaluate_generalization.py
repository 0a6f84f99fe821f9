"""Roll out trained models (NPE, NP, LSTM checkpoints, any mix) in worlds other than the one they
were trained in (more balls, new obstacle layouts) and compare velocity cosine similarity and relative
magnitude error per world, with a constant-velocity baseline: the paper's generalization experiments."""
from pathlib import Path

import pandas as pd

from npe.checkpoint import load_models, runnable
from npe.cli import Parser, add_experiment_flags, experiment_worlds, positive_int, run_cli
from npe.data import simulate
from npe.files import save_text
from npe.plots import plot_generalization
from npe.rollouts import ConstantVelocity, compare, generalization_markdown


def main():
    p = Parser(description=__doc__)
    add_experiment_flags(p, "checkpoints to compare, all trained in one world; each is named by its file stem",
                         "to test on", num_scenes=100, seed=3000)
    p.add_argument("--rollout_steps", type=positive_int, default=50, help="autoregressive steps")
    p.add_argument("--out_png", type=Path, default=Path("figs/generalization.png"),
                   help="figure; the CSV and a Markdown table are written beside it with the same stem")
    args = p.parse_args()
    models, meta = load_models(args.ckpts)
    models["constant_velocity"] = ConstantVelocity(next(iter(models.values())).pos_step)
    tables = []
    for label, changes in experiment_worlds(args, meta).items():
        scenes = simulate(meta, args.seed, args.num_scenes, args.rollout_steps + 2, **changes)
        tables.append(compare(runnable(models, scenes.shape[2], label), scenes, args.rollout_steps).assign(world=label))
        print(f"{label}: done")
    table = pd.concat(tables, ignore_index=True)
    save_text(table.to_csv(index=False), args.out_png.with_suffix(".csv"))
    markdown = generalization_markdown(table, sorted({10, args.rollout_steps}))
    save_text(markdown, args.out_png.with_suffix(".md"))
    plot_generalization(table, args.out_png, f"{args.num_scenes} fresh scenes per world (seed {args.seed})")
    print(markdown + f"wrote {args.out_png} and its .csv and .md")


if __name__ == "__main__":
    run_cli(main)

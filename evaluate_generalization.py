"""Roll out trained models (NPE, NP, LSTM checkpoints, any mix) in worlds other than the one they
were trained in (more balls, new obstacle layouts) and compare velocity cosine similarity and relative
magnitude error per world, with a constant-velocity baseline: the paper's generalization experiments."""
from pathlib import Path

import pandas as pd

from npe.checkpoint import load_models
from npe.cli import Parser, nonnegative_int, positive_int, run_cli
from npe.data import add_world_flags, scene_frames, test_worlds
from npe.files import save_text
from npe.plots import plot_generalization
from npe.rollout import ConstantVelocity, compare, generalization_markdown


def main():
    p = Parser(description=__doc__)
    p.add_argument("--ckpts", type=Path, nargs="+", required=True,
                   help="checkpoints to compare, all trained in one world; each is named by its file stem")
    add_world_flags(p, "to test on")
    p.add_argument("--num_scenes", type=positive_int, default=100, help="fresh scenes per world")
    p.add_argument("--rollout_steps", type=positive_int, default=50, help="autoregressive steps")
    p.add_argument("--seed", type=nonnegative_int, default=3000, help="seed of the fresh scenes (not a training seed)")
    p.add_argument("--out_png", type=Path, default=Path("figs/generalization.png"),
                   help="figure; the CSV and a Markdown table are written beside it with the same stem")
    args = p.parse_args()
    models, meta = load_models(args.ckpts)
    models["constant_velocity"] = ConstantVelocity(next(iter(models.values())).pos_step)
    tables = []
    for label, changes in test_worlds(args, meta).items():
        scenes = scene_frames(meta, args.seed, args.num_scenes, args.rollout_steps + 2, **changes)
        objects = scenes.shape[2]
        fits = {name: m for name, m in models.items() if getattr(m, "slots", objects) >= objects}
        for name in models.keys() - fits.keys():  # the LSTM has a fixed number of input slots
            print(f"{label}: {name} skipped: it takes at most {models[name].slots} objects, these scenes have {objects}")
        tables.append(compare(fits, scenes, args.rollout_steps).assign(world=label))
        print(f"{label}: done")
    table = pd.concat(tables, ignore_index=True)
    save_text(table.to_csv(index=False), args.out_png.with_suffix(".csv"))
    markdown = generalization_markdown(table, sorted({10, args.rollout_steps}))
    save_text(markdown, args.out_png.with_suffix(".md"))
    plot_generalization(table, args.out_png, f"{args.num_scenes} fresh scenes per world (seed {args.seed})")
    print(markdown + f"wrote {args.out_png} and its .csv and .md")


if __name__ == "__main__":
    run_cli(main)

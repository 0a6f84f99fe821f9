"""Roll out trained models (NPE, NP, LSTM checkpoints, any mix) in worlds other than the one they
were trained in (more balls, new obstacle layouts) and compare velocity cosine similarity and relative
magnitude error per world, with a constant-velocity baseline and the simulator oracle (the ceiling of the
rollout protocol), with each rollout's kinetic energy against the truth's, its overlapping balls and its
paired difference to the oracle: the paper's generalization experiments."""
from pathlib import Path

import pandas as pd

from npe.checkpoint import describe_models, load_models, runnable
from npe.cli import Parser, add_experiment_flags, experiment_worlds, output_file, positive_int, run_cli, set_threads
from npe.config import World
from npe.data import simulate
from npe.files import check_writable, save_text
from npe.plots import model_kind, plot_generalization
from npe.rollouts import ConstantVelocity, SimulatorOracle, compare, generalization_markdown


def main():
    p = Parser(description=__doc__)
    add_experiment_flags(p, "checkpoints to compare",
                         "to test on", num_scenes=100, seed=3000)
    p.add_argument("--rollout_steps", type=positive_int, default=50, help="autoregressive steps")
    p.add_argument("--out_png", type=output_file(".png"), default=Path("figs/generalization.png"),
                   help="figure (.png); the CSV and a Markdown table are written beside it with the same stem")
    args = p.parse_args()
    check_writable(args.out_png, args.out_png.with_suffix(".csv"), args.out_png.with_suffix(".md"))
    print(f"torch CPU threads: {set_threads(args.threads)}")
    models, meta = load_models(args)
    checkpoints, described = {label: str(model.path) for label, model in models.items()}, describe_models(models)
    kinds = {label: model_kind(model) for label, model in models.items()}
    models["simulator_oracle"] = SimulatorOracle(meta)  # the ceiling of the rollout protocol, in every world
    models["constant_velocity"] = ConstantVelocity(next(iter(models.values())).pos_step)
    training = World.from_dict(meta["world"])
    worlds = experiment_worlds(args, meta)
    trained = {label for label, world in worlds.items() if set(world["num_balls"]) <= set(training.num_balls)
               and set(world["layouts"]) <= set(training.layouts)}
    shown = f"{args.num_scenes} fresh scenes per world (seed {args.seed})"
    tables = []
    for label, changes in worlds.items():
        scenes = simulate(meta, args.seed, args.num_scenes, args.rollout_steps + 2, **changes)
        tables.append(compare(runnable(models, scenes, label), scenes, args.rollout_steps, meta)
                      .assign(world=label))
        print(f"{label}: done")
    table = pd.concat(tables, ignore_index=True).assign(
        checkpoint=lambda t: t.model.map(checkpoints).fillna(""), scenes=shown,
        trained_world=lambda t: t.world.isin(trained))
    save_text(table.to_csv(index=False), args.out_png.with_suffix(".csv"))
    markdown = generalization_markdown(table, sorted({min(10, args.rollout_steps), args.rollout_steps}))
    save_text(markdown, args.out_png.with_suffix(".md"))
    plot_generalization(table, args.out_png, f"{shown}; {described}", trained, kinds)
    print(f"Rollouts of {described}, the simulator oracle and constant velocity, {shown}; training worlds: "
          f"{', '.join(sorted(trained)) or 'none'}")
    print(markdown + f"wrote {args.out_png} and its .csv and .md")

if __name__ == "__main__":
    run_cli(main)

"""Roll out checkpoints of any kind (classic, paper, modern, NP, LSTM; of the next velocity or the next state;
trained in one world) on fresh scenes and compare their velocities with the truth, with a constant-velocity
baseline and with the simulator oracle (the simulator's own next velocity from each rolled-out state, the
ceiling of the velocity protocol):
cosine similarity and relative magnitude error per step, with 95% bootstrap intervals over the scenes in
the CSV, and the physics of each rollout: its kinetic energy against the truth's, balls overlapping or
through a wall, and its paired difference to the oracle. Without checkpoint flags: the three shipped
4-ball models (classic, modern and next state)."""
from pathlib import Path

import pandas as pd

from npe.checkpoint import describe_models, load_models, same_world
from npe.cli import (BASELINES, NPEError, Parser, add_checkpoint_flags, add_threads_flag, nonnegative_float,
                     output_file, positive_int, random_seed, run_cli, scene_count, set_threads)
from npe.config import World
from npe.data import load_meta, load_split, simulate
from npe.files import check_writable, save_text
from npe.models import one_step_loss
from npe.plots import model_kind, plot_rollout_metrics
from npe.rollouts import (ConstantVelocity, SimulatorOracle, chaos_name, chaos_reference, compare, frames_markdown,
                          one_step_by_frame, physics_markdown, recorded_rows, results_markdown, summary_text)

TABLE_STEPS = (1, 5, 10, 25, 50)  # printed
RESULT_STEPS = (10, 25, 50)  # in the Markdown results table, with intervals
PHYSICS_STEPS = (10, 25, 50, 100)  # in the physics table, those the rollout reaches (else its last)


def main():
    p = Parser(description=__doc__)
    add_checkpoint_flags(p, "checkpoints to compare")
    p.add_argument("--num_scenes", type=scene_count, default=200, help="fresh scenes to roll out")
    p.add_argument("--rollout_steps", type=positive_int, default=50, help="autoregressive steps")
    p.add_argument("--seed", type=random_seed, default=1000, help="seed of the fresh scenes (not a training seed)")
    p.add_argument("--out_png", type=output_file(".png"),
                   default=Path("figs/prediction_task_classic_vs_modern_2panels.png"),
                   help="figure (.png); the CSV is written beside it with the same stem")
    p.add_argument("--chaos_px", type=nonnegative_float, default=None,
                   help="also roll the simulator itself on from each scene's true state at t, with Gaussian noise "
                        "of this std in px on the balls' positions: how fast chaos alone leaves the truth")
    p.add_argument("--chaos_px_per_frame", type=nonnegative_float, default=None,
                   help="as --chaos_px, with noise of this std in px per frame on the balls' velocities")
    p.add_argument("--test_prefix", default=None,
                   help="dataset prefix: also measure one-step MSE on its test split, and one-step errors by "
                        "frame kind (free flight, wall, ball-ball), and write the results tables as Markdown beside "
                        "the figure (needs --rollout_steps 50 or more)")
    p.add_argument("--paired_with", default="simulator_oracle",
                   help="label of the model every other is compared with scene by scene (the physics table's "
                        "paired difference and its interval; the CSV's _vs_ columns)")
    add_threads_flag(p)
    args = p.parse_args()
    physics_path = args.out_png.with_name(f"{args.out_png.stem}_physics.md")
    outputs = [args.out_png, args.out_png.with_suffix(".csv"), physics_path]
    frames_path = args.out_png.with_name(f"{args.out_png.stem}_frames.csv")
    if args.test_prefix:
        outputs += [args.out_png.with_suffix(".md"), frames_path, frames_path.with_suffix(".md")]
    check_writable(*outputs)  # before the work: a name too long or a read-only folder found after it loses it
    print(f"torch CPU threads: {set_threads(args.threads)}")
    models, meta = load_models(args)
    box = min(meta["world"]["width"], meta["world"]["height"])
    if max(args.chaos_px or 0, args.chaos_px_per_frame or 0) > box:  # balls thrown out of the world: no reference
        raise NPEError(f"--chaos_px and --chaos_px_per_frame must be at most the box's side, {box:g} px")
    chaos = args.chaos_px is not None or args.chaos_px_per_frame is not None
    if chaos and (name := chaos_name(args.chaos_px or 0.0, args.chaos_px_per_frame or 0.0)) in models:
        raise NPEError(f"the label {name!r} is the name of the chaos reference's rows; give that checkpoint another "
                       f"one with --labels")
    if args.test_prefix:  # read before any output is written, so a bad dataset leaves nothing behind
        if args.rollout_steps < max(TABLE_STEPS):
            raise NPEError(f"--test_prefix needs --rollout_steps {max(TABLE_STEPS)} or more for the results table")
        test_meta = load_meta(args.test_prefix)
        same_world([meta, test_meta], [next(iter(models.values())).path, args.test_prefix])
        test = load_split(args.test_prefix, "test", test_meta)
    if args.paired_with not in [*models, *BASELINES]:
        raise NPEError(f"--paired_with {args.paired_with!r} names no model of this comparison (the labels are "
                       f"{', '.join([*models, *BASELINES])})")
    scenes = simulate(meta, args.seed, args.num_scenes, args.rollout_steps + 2)
    baselines = {"simulator_oracle": SimulatorOracle(meta),  # the ceiling of this rollout protocol
                 "constant_velocity": ConstantVelocity(next(iter(models.values())).pos_step)}
    named = {**models, **baselines}
    shown = f"{args.num_scenes} fresh scenes (seed {args.seed}) of {World.from_dict(meta['world']).describe()}"
    table = compare(named, scenes, args.rollout_steps, meta, args.paired_with)
    if chaos:
        table = pd.concat([table, chaos_reference(meta, scenes, args.rollout_steps, args.chaos_px or 0.0,
                                                  args.chaos_px_per_frame or 0.0)], ignore_index=True)
    table = table.assign(
        checkpoint=lambda t: t.model.map({label: str(m.path) for label, m in models.items()}).fillna(""),
        scenes=shown)
    csv_path = args.out_png.with_suffix(".csv")
    save_text(table.to_csv(index=False), csv_path)
    if args.test_prefix:
        one_step = {name: model for name, model in named.items() if name != "simulator_oracle"}
        mse = {name: one_step_loss(model, test) for name, model in one_step.items()}
        save_text(results_markdown(table, RESULT_STEPS, mse), args.out_png.with_suffix(".md"))
        frames = one_step_by_frame(one_step, test, meta)
        frames_table = frames_markdown(frames)
        save_text(frames.to_csv(index=False), frames_path)
        save_text(frames_table, frames_path.with_suffix(".md"))
        print(f"One-step errors on the test windows of {args.test_prefix}, by what happens in the frame:\n"
              f"{frames_table}wrote {args.out_png.with_suffix('.md')}, {frames_path} and "
              f"{frames_path.with_suffix('.md')}")
    physics = physics_markdown(
        table, [s for s in PHYSICS_STEPS if s <= args.rollout_steps] or [args.rollout_steps],
        recorded_rows(scenes, args.rollout_steps, meta), args.paired_with)
    save_text(physics, physics_path)
    plot_rollout_metrics(table, args.out_png, f"{shown}\n{describe_models(models)}",
                         {label: model_kind(model) for label, model in models.items()})
    print(f"Rollouts of {describe_models(models)}, the simulator oracle and constant velocity, on {shown}:")
    print(summary_text(table, TABLE_STEPS))
    print(f"\nPhysics: kinetic energy predicted / true, balls overlapping or through a wall (share of frames), "
          f"and the paired difference in cosine similarity to {args.paired_with}:\n{physics}")
    print(f"wrote {args.out_png}, {csv_path} and {physics_path}")


if __name__ == "__main__":
    run_cli(main)

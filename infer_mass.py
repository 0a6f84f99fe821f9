"""Infer the mass of one ball from watching it, as in the paper: in fresh scenes, ball 0's mass is
hidden; each mass of the training world is tried in each model, and the one whose one-step predicted
velocities match the observed ones best is the guess. Accuracy is counted over the scenes in which
ball 0 collides with another ball (the only ones that carry information about its mass), under two
protocols: ours judges a guess by all balls' predictions over every observed frame, the authors' code
by ball 0's own prediction over the frames in which it collides."""
from pathlib import Path

import pandas as pd

from npe.checkpoint import describe_models, load_models, runnable
from npe.cli import (NPEError, Parser, add_experiment_flags, experiment_worlds, output_file, positive_int, run_cli,
                     set_threads)
from npe.config import MASS, World
from npe.data import simulate
from npe.files import check_writable, save_text
from npe.mass import PROTOCOLS, collides, collision_reach, infer_mass
from npe.rollouts import markdown_table

UNKNOWN = 0  # the ball whose mass is hidden


def main():
    p = Parser(description=__doc__)
    add_experiment_flags(p, "checkpoints trained with several masses (generate_dataset_4ball.py --masses), one world",
                         "to observe", num_scenes=500, seed=4000)
    p.add_argument("--observe_frames", type=positive_int, default=30, help="frames observed per scene (3 or more)")
    p.add_argument("--out_csv", type=output_file(".csv"), default=Path("figs/mass_inference.csv"),
                   help="table of results (.csv); a Markdown copy is written beside it")
    args = p.parse_args()
    check_writable(args.out_csv, args.out_csv.with_suffix(".md"))
    print(f"torch CPU threads: {set_threads(args.threads)}")
    if args.observe_frames < 3:
        raise NPEError(f"--observe_frames must be 3 or more (one window of t-1, t, t+1), got {args.observe_frames}")
    models, meta = load_models(args)
    world = World.from_dict(meta["world"])
    if len(world.masses) < 2:
        raise NPEError(f"{args.ckpts[0]} was trained with one mass ({world.masses[0]:g}): there is nothing to "
                       f"infer; train on data made with --masses, e.g. 1,5,25")
    reach = collision_reach(meta)
    rows = []
    for label, changes in experiment_worlds(args, meta).items():
        scenes = simulate(meta, args.seed, args.num_scenes, args.observe_frames, **changes)
        hit = collides(scenes, UNKNOWN, reach)
        if not hit.any():
            raise NPEError(f"{label}: ball {UNKNOWN} collides with no other ball in {args.num_scenes} scenes of "
                           f"{args.observe_frames} frames; use more --num_scenes or --observe_frames")
        truth = scenes[hit, 0, UNKNOWN, MASS]
        for name, model in runnable(models, scenes, label).items():
            accuracy = {f"accuracy ({protocol})": (infer_mass(model, scenes[hit], UNKNOWN, world.masses, protocol,
                                                               reach) == truth).float().mean().item()
                        for protocol in PROTOCOLS}
            rows.append({"world": label, "model": name, "collision_scenes": int(hit.sum()), **accuracy,
                         "chance": 1 / len(world.masses)})
    table = pd.DataFrame(rows)
    shown = f"{args.num_scenes} fresh scenes per world (seed {args.seed}), {args.observe_frames} frames observed"
    save_text(table.assign(checkpoint=table.model.map({label: str(m.path) for label, m in models.items()}),
                           scenes=shown).to_csv(index=False), args.out_csv)
    markdown = markdown_table(list(table), [[f"{v:.3f}" if isinstance(v, float) else str(v).replace("_", " ")
                                             for v in row] for row in table.itertuples(index=False)])
    save_text(markdown, args.out_csv.with_suffix(".md"))
    print(f"Mass inference of {describe_models(models)} on {shown}:\n" + markdown + f"wrote {args.out_csv} and {args.out_csv.with_suffix('.md')}")


if __name__ == "__main__":
    run_cli(main)

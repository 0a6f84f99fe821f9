"""Render videos of fresh scenes side by side: the ground truth and the rollout of each checkpoint (any
kinds, trained in one world), all started from the same two true frames, each titled in its model kind's
colour. Without checkpoint flags: the three shipped 4-ball models (classic, modern and next state).
--num_balls, --masses and --layout draw the scenes from another world (default: the checkpoints'); masses
are written on the balls when they differ. --gif writes looping GIFs, which web pages show inline."""
import re
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from npe.checkpoint import load_models, runnable
from npe.cli import (Parser, add_checkpoint_flags, add_world_flags, frame_rate, positive_int, random_seed, run_cli,
                     scene_count, world_changes)
from npe.files import check_writable
from npe.config import World
from npe.data import simulate
from npe.plots import kind_colours, model_kind
from npe.render import START_FRAMES, render_rollouts
from npe.rollouts import rollout


def main():
    p = Parser(description=__doc__)
    add_checkpoint_flags(p, "checkpoints to roll out, a panel each")
    add_world_flags(p, defaults=False)
    p.add_argument("--num_scenes", type=scene_count, default=5, help="fresh scenes, one video each")
    p.add_argument("--rollout_steps", type=positive_int, default=60, help="rollout steps after the 2 true frames")
    p.add_argument("--out_dir", type=Path, default=Path("videos"), help="folder for the videos")
    p.add_argument("--tag", default=None,
                   help="videos are OUT_DIR/TAG_scene{N}.mp4 (default: rollout_gt_ and the labels joined by _)")
    p.add_argument("--gif", action="store_true",
                   help="write looping GIFs (TAG_scene{N}.gif, through pillow) instead of mp4: GitHub and other web "
                        "pages show them inline; larger than mp4 (two panels of 62 frames: about 0.66 MB)")
    p.add_argument("--seed", type=random_seed, default=2000, help="seed of the fresh scenes (not a training seed)")
    p.add_argument("--fps", type=frame_rate, default=30, help="video frames per second")
    args = p.parse_args()
    # A few scenes: extra threads only add synchronization, and stall when the cores are busy.
    torch.set_num_threads(1)
    models, meta = load_models(args)
    changes = world_changes(args)
    world = replace(World.from_dict(meta["world"]), **changes).describe()
    # A scene takes milliseconds to simulate: worker processes would cost more to start than they save.
    scenes = simulate(meta, args.seed, args.num_scenes, START_FRAMES + args.rollout_steps, workers=1,
                      **changes)  # [S, F, N, 5]
    start = scenes[:, :START_FRAMES]
    shown = runnable(models, scenes, world)
    tag = re.sub(r"[^\w.-]+", "_", args.tag or "_".join(["rollout_gt", *shown]))  # a file name, whatever the labels
    paths = [args.out_dir / f"{tag}_scene{s}.{'gif' if args.gif else 'mp4'}" for s in range(args.num_scenes)]
    check_writable(*paths)  # before the rollouts and renders: a name too long or a read-only folder is found now
    titles = {label: f"{label}\n{model.path.parent.name}/{model.path.name}" for label, model in shown.items()}
    rollouts = {titles[label]: torch.cat([start, rollout(model, start, args.rollout_steps)], dim=1)
                for label, model in shown.items()}
    colours = {titles[label]: colour
               for label, (colour, _) in kind_colours({label: model_kind(m) for label, m in shown.items()}).items()}
    print(f"{args.num_scenes} fresh scenes (seed {args.seed}) of {world}")
    for s, path in enumerate(tqdm(paths, unit="video", desc="rendering")):
        render_rollouts({f"Ground truth\nseed {args.seed}, scene {s}": scenes[s],
                         **{title: states[s] for title, states in rollouts.items()}}, meta, path, args.fps, colours)
        tqdm.write(str(path))


if __name__ == "__main__":
    run_cli(main)

"""Render videos of fresh scenes side by side: the ground truth, the classic NPE's rollout and the
modern NPE's rollout, all three started from the same two true frames."""
from pathlib import Path

import torch
from tqdm import tqdm

from npe.checkpoint import add_checkpoint_flags, load_classic_and_modern
from npe.cli import Parser, nonnegative_int, positive_float, positive_int, run_cli
from npe.data import simulate
from npe.render import START_FRAMES, render_triple
from npe.rollouts import rollout


def main():
    p = Parser(description=__doc__)
    add_checkpoint_flags(p)
    p.add_argument("--num_scenes", type=positive_int, default=5, help="fresh scenes, one video each")
    p.add_argument("--rollout_steps", type=positive_int, default=60, help="rollout steps after the 2 true frames")
    p.add_argument("--out_dir", type=Path, default=Path("videos"), help="folder for the mp4 files")
    p.add_argument("--seed", type=nonnegative_int, default=2000, help="seed of the fresh scenes (not a training seed)")
    p.add_argument("--fps", type=positive_float, default=30, help="video frames per second")
    args = p.parse_args()
    # A few scenes of 4 balls: extra threads only add synchronization, and stall when the cores are busy.
    torch.set_num_threads(1)
    models, meta = load_classic_and_modern(args)
    # A scene takes milliseconds to simulate: worker processes would cost more to start than they save.
    scenes = simulate(meta, args.seed, args.num_scenes, START_FRAMES + args.rollout_steps,
                          workers=1)  # [S, F, N, 5]
    start = scenes[:, :START_FRAMES]
    classic, modern = (torch.cat([start, rollout(m, start, args.rollout_steps)], dim=1)
                       for m in models.values())
    for s in tqdm(range(args.num_scenes), unit="video", desc="rendering"):
        path = args.out_dir / f"rollout_gt_classic_modern_scene{s}.mp4"
        render_triple({"Ground truth": scenes[s], "Classic NPE": classic[s], "Modern NPE": modern[s]},
                      meta, path, args.fps)
        tqdm.write(str(path))


if __name__ == "__main__":
    run_cli(main)

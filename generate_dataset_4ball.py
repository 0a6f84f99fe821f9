"""Simulate balls bouncing in a box and write 3-frame windows (t-1, t, t+1) split by scene.

The defaults make the paper's 4 equal balls in a plain box; --num_balls, --masses and --layout make
the worlds of its other experiments, each scene drawing its number of balls, its layout and every
ball's mass from the given sets."""
from npe.cli import Parser, add_world_flags, nonnegative_int, positive_int, random_seed, run_cli, scene_count
from npe.config import World
from npe.data import generate_dataset, shard_path


def main():
    p = Parser(description=__doc__)
    p.add_argument("--num_scenes", type=scene_count, default=12000, help="scenes of 60 frames, split 70/15/15")
    p.add_argument("--out_prefix", default="data/balls_n4_t60_uniform/balls_n4_t60_uniform",
                   help="writes PREFIX_{train,val,test}.pt and PREFIX_meta.json (folders are created)")
    p.add_argument("--seed", type=random_seed, default=0, help="scene i is simulated from (seed, i)")
    p.add_argument("--workers", type=positive_int, default=None, help="simulation processes (default: all cores)")
    add_world_flags(p)
    p.add_argument("--shard", type=nonnegative_int, default=0,
                   help="with --num_shards: simulate only this part of the scenes (0 to num_shards - 1)")
    p.add_argument("--num_shards", type=positive_int, default=1,
                   help="split the scenes into this many parts, one per run, to merge with merge_dataset_shards.py")
    args = p.parse_args()
    world = World(num_balls=args.num_balls, masses=args.masses, layouts=args.layout)
    meta = generate_dataset(args.out_prefix, args.num_scenes, args.seed, args.workers, world,
                            shard=args.shard, num_shards=args.num_shards)
    if args.num_shards > 1:
        print(f"wrote {shard_path(args.out_prefix, args.shard, args.num_shards)}; when all {args.num_shards} are "
              f"written, run merge_dataset_shards.py --out_prefix {args.out_prefix}")
        return
    print(f"wrote {args.out_prefix}_{{train,val,test}}.pt and _meta.json: scenes {meta['scenes']}, "
          f"windows {meta['windows']}, {meta['num_objects']} objects per window, {meta['generation_seconds']} s")


if __name__ == "__main__":
    run_cli(main)

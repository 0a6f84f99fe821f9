"""Simulate balls bouncing in a box and write 3-frame windows (t-1, t, t+1) split by scene."""
from npe.cli import Parser, nonnegative_int, positive_int, run_cli
from npe.data import generate_dataset


def main():
    p = Parser(description=__doc__)
    p.add_argument("--num_scenes", type=positive_int, default=12000, help="scenes of 60 frames, split 70/15/15")
    p.add_argument("--out_prefix", default="data/balls_n4_t60_uniform/balls_n4_t60_uniform",
                   help="writes PREFIX_{train,val,test}.pt and PREFIX_meta.json (folders are created)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="scene i is simulated from (seed, i)")
    p.add_argument("--workers", type=positive_int, default=None, help="simulation processes (default: all cores)")
    args = p.parse_args()
    meta = generate_dataset(args.out_prefix, args.num_scenes, args.seed, args.workers)
    print(f"wrote {args.out_prefix}_{{train,val,test}}.pt and _meta.json: scenes {meta['scenes']}, "
          f"windows {meta['windows']}, {meta['generation_seconds']} s")


if __name__ == "__main__":
    run_cli(main)

"""Merge the parts written by generate_dataset_4ball.py --shard I --num_shards N (on one machine or
several) into the dataset files a single run with the same flags writes."""
from npe.cli import Parser, run_cli
from npe.data import merge_shards


def main():
    p = Parser(description=__doc__)
    p.add_argument("--out_prefix", required=True,
                   help="the shards' --out_prefix: reads PREFIX_shard*of*.pt, writes PREFIX_{train,val,test}.pt "
                        "and PREFIX_meta.json")
    args = p.parse_args()
    meta = merge_shards(args.out_prefix)
    print(f"wrote {args.out_prefix}_{{train,val,test}}.pt and _meta.json: scenes {meta['scenes']}, "
          f"windows {meta['windows']}; the shard files can be deleted")


if __name__ == "__main__":
    run_cli(main)

"""One rank of ``fisherpack reproduce`` whose masks differ on rank 1 (tests/test_dist.py).

Usage: python tests/diverge_worker.py CLI-ARGS...; torchrun's environment variables name the rank.
Rank 1 flips one entry of its masks each round through ``pipeline.run``'s ``masks_hook``, so the
ranks must stop with RanksDisagreeError instead of hanging."""

import functools
import os
import sys

from fisherpack import cli, pipeline


def _flip(masks):
    name = next(iter(masks))
    flipped = masks[name].clone()
    flipped.view(-1)[0] ^= True
    return {**masks, name: flipped}


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        pipeline.run = functools.partial(pipeline.run, masks_hook=_flip)
    sys.exit(cli.main(sys.argv[1:]))

"""recipes/dispatch_bench.py's correctness check can fail: the reference (a plain all_to_all_single of the same
tokens, here in a one-rank gloo group) differs from a dispatch that sent a token copy to the wrong expert."""
from __future__ import annotations

import torch
import torch.distributed as dist

from recipes import dispatch_bench


def test_reference_matches_a_right_dispatch_and_not_a_wrong_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        spec = {"tokens": 300, "hidden": 8, "experts": 4, "topk": 2, "seed": 3, "dtype": "bf16"}
        x, routing_map, _ = dispatch_bench._routing(spec, 0, "cpu")
        expected = dispatch_bench._reference(x, routing_map, 1)
        assert len(expected) == 300 * 2 and max(r[3] for r in expected) == 255  # ids past 256 stay exact
        expert, token = routing_map.T.nonzero(as_tuple=True)  # expert-major order, as the dispatchers permute
        out, per_expert = x[token], torch.bincount(expert, minlength=4)
        assert dispatch_bench._received(out, per_expert) == expected
        moved = per_expert.clone()
        moved[0], moved[1] = moved[0] - 1, moved[1] + 1  # one copy counted under the next expert
        assert dispatch_bench._received(out, moved) != expected
    finally:
        dist.destroy_process_group()

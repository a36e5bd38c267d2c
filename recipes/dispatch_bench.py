"""Dispatcher benchmark, compute side: dispatch and combine through megatron-core 0.19.2's own token dispatchers
(MoEAlltoAllTokenDispatcher, MoEAllGatherTokenDispatcher, MoEFlexTokenDispatcher), so what is measured and tuned
is what trains. Started under torchrun by `moe-dispatch-bench` (launcher/tools/dispatch_bench.py), one process
per GPU (or gloo processes on CPU, alltoall/allgather only); every rank is one EP rank.

usage: python -m recipes.dispatch_bench SPEC.json OUT.json
SPEC: {"hidden", "experts", "topk", "tokens" (per rank), "dtype", "warmup", "iters", "seed",
       "cases": [{"backend": alltoall|allgather|deepep|hybridep, "knobs": {config field: value}}]}
Each case's knobs are TransformerConfig fields (moe_flex_dispatcher_num_sms, moe_hybridep_num_blocks_permute, ...)
or, for deepep, "nvl_chunk"/"nvl_buffer" (Buffer.get_dispatch_config/get_combine_config's NVLink chunk and
buffer sizes, the only DeepEP knobs megatron reads through those two functions).
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _routing(spec: dict, rank: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random tokens stamped with (rank, id // 256, id % 256) in their first elements (integers below 256 are
    exact in bf16), a random top-k routing map and its probabilities."""
    g = torch.Generator().manual_seed(spec["seed"] + rank)
    t, e, k = spec["tokens"], spec["experts"], spec["topk"]
    x = torch.randn(t, spec["hidden"], generator=g)
    ids = torch.arange(t)
    x[:, 0], x[:, 1], x[:, 2] = rank, ids // 256, ids % 256
    chosen = torch.rand(t, e, generator=g).topk(k, dim=1).indices
    routing_map = torch.zeros(t, e, dtype=torch.bool).scatter_(1, chosen, True)
    probs = torch.rand(t, e, generator=g).masked_fill(~routing_map, 0.0)
    return x.to(DTYPES[spec["dtype"]]).to(device), routing_map.to(device), probs.to(device)


def _stamp(rows: torch.Tensor) -> torch.Tensor:
    return rows[:, :3].float()


def _reference(x: torch.Tensor, routing_map: torch.Tensor, ep: int) -> list[tuple[int, ...]]:
    """What each rank should receive, by a plain all_to_all_single of the same tokens: (local expert, rank,
    id // 256, id % 256) per routed copy."""
    local = routing_map.shape[1] // ep
    rows, counts = [], []
    for dst in range(ep):
        tok, ex = routing_map[:, dst * local:(dst + 1) * local].nonzero(as_tuple=True)
        rows.append(torch.cat([ex.float()[:, None], _stamp(x[tok])], dim=1))
        counts.append(len(tok))
    send = torch.cat(rows).contiguous()
    in_counts = torch.tensor(counts, device=x.device)
    out_counts = torch.empty_like(in_counts)
    dist.all_to_all_single(out_counts, in_counts)
    recv = torch.empty(int(out_counts.sum()), 4, device=x.device)
    dist.all_to_all_single(recv, send, out_counts.tolist(), counts)
    return sorted(tuple(int(v) for v in r) for r in recv.tolist())


def _received(out: torch.Tensor, tokens_per_expert: torch.Tensor) -> list[tuple[int, ...]]:
    experts = torch.repeat_interleave(torch.arange(len(tokens_per_expert)), tokens_per_expert.cpu().long())
    rows = torch.cat([experts.float()[:, None], _stamp(out).cpu()], dim=1)
    return sorted(tuple(int(v) for v in r) for r in rows.tolist())


def _config(spec: dict, case: dict, ep: int, device: str):
    from megatron.core.transformer.transformer_config import TransformerConfig

    backend = case["backend"]
    knobs = {k: v for k, v in case.get("knobs", {}).items() if k not in ("nvl_chunk", "nvl_buffer")}
    flex = backend in ("deepep", "hybridep")
    return TransformerConfig(
        num_layers=1, hidden_size=spec["hidden"], num_attention_heads=1, num_moe_experts=spec["experts"],
        moe_router_topk=spec["topk"], expert_model_parallel_size=ep, use_cpu_initialization=device == "cpu",
        moe_token_dispatcher_type="flex" if flex else backend, moe_flex_dispatcher_backend=backend if flex else
        "deepep", moe_router_dtype="fp32", bf16=spec["dtype"] == "bf16", params_dtype=DTYPES[spec["dtype"]],
        **knobs)


def _dispatcher(config, ep: int):
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe import token_dispatcher as td

    pgs = ProcessGroupCollection.use_mpu_process_groups()
    local = config.num_moe_experts // ep
    indices = [dist.get_rank() * local + i for i in range(local)]
    cls = {"alltoall": td.MoEAlltoAllTokenDispatcher, "allgather": td.MoEAllGatherTokenDispatcher,
           "flex": td.MoEFlexTokenDispatcher}[config.moe_token_dispatcher_type]
    return cls(local, indices, config, pg_collection=pgs)


def _fresh_buffers(case: dict) -> None:
    """megatron keeps one DeepEP Buffer / HybridEP buffer per process and builds it at the first dispatch with
    the knobs of that moment: drop it so each case's knobs take effect. DeepEP's NVLink chunk/buffer sizes:
    megatron sizes (and DeepEP runs) its Buffer from Buffer.get_dispatch_config / get_combine_config, so a case
    that sets them replaces what those return, and the next case gets DeepEP's own again."""
    if case["backend"] not in ("deepep", "hybridep"):
        return
    import deep_ep
    from megatron.core.transformer.moe import fused_a2a

    fused_a2a._buffer = None  # noqa: SLF001 - the DeepEP Buffer megatron caches
    if hasattr(fused_a2a, "reset_hybrid_ep_buffer"):
        fused_a2a.reset_hybrid_ep_buffer()
    # the staticmethod objects themselves (a plain function set on the class would get self when DeepEP calls it)
    own = _DEEPEP_CONFIGS.setdefault("own", tuple(inspect.getattr_static(deep_ep.Buffer, name)
                                                  for name in ("get_dispatch_config", "get_combine_config")))
    deep_ep.Buffer.get_dispatch_config, deep_ep.Buffer.get_combine_config = own
    knobs = case.get("knobs", {})
    if case["backend"] == "deepep" and ("nvl_chunk" in knobs or "nvl_buffer" in knobs):
        # Config(num_sms, NVLink send chunk, NVLink receive buffer, RDMA send chunk, RDMA receive buffer); the RDMA
        # sizes are unused within one node (<= 8 ranks), the only case tuned here
        cfg = deep_ep.Config(deep_ep.Buffer.num_sms, knobs.get("nvl_chunk", 8), knobs.get("nvl_buffer", 256), 16, 128)
        deep_ep.Buffer.get_dispatch_config = staticmethod(lambda num_ranks: cfg)
        deep_ep.Buffer.get_combine_config = staticmethod(lambda num_ranks: cfg)


_DEEPEP_CONFIGS: dict = {}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(spec: dict, case: dict, device: str) -> dict:
    ep = dist.get_world_size()
    _fresh_buffers(case)
    disp = _dispatcher(_config(spec, case, ep, device), ep)
    x, routing_map, probs = _routing(spec, dist.get_rank(), device)
    expected = _reference(x, routing_map, ep)
    t_dispatch, t_combine = [], []
    for i in range(spec["warmup"] + spec["iters"]):
        _sync(device)
        t0 = time.perf_counter()
        h, p = disp.dispatch_preprocess(x, routing_map, probs)
        h, p = disp.token_dispatch(h, p)
        out, tokens_per_expert, _ = disp.dispatch_postprocess(h, p)
        _sync(device)
        t1 = time.perf_counter()
        y = disp.combine_postprocess(disp.token_combine(disp.combine_preprocess(out)))
        _sync(device)
        t2 = time.perf_counter()
        if i >= spec["warmup"]:
            t_dispatch.append(t1 - t0)
            t_combine.append(t2 - t1)
    # dispatch: the same (expert, token) copies as the reference; combine of untouched copies: each token is the
    # sum of its top-k copies (probabilities are applied by the experts, not by the dispatcher)
    ok = _received(out, tokens_per_expert) == expected and tuple(y.shape) == tuple(x.shape) and \
        torch.allclose(y.float(), x.float() * spec["topk"], rtol=2e-2, atol=2e-2)
    bad = torch.tensor([0 if ok else 1], device=device)
    dist.all_reduce(bad)
    # algorithm bandwidth: the bytes of the routed token copies this rank sends (tokens x top-k x hidden x size)
    nbytes = spec["tokens"] * spec["topk"] * spec["hidden"] * x.element_size()
    times = torch.tensor([sorted(t_dispatch)[len(t_dispatch) // 2], sorted(t_combine)[len(t_combine) // 2]],
                         device=device, dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the step
    d_ms, c_ms = (float(v) * 1e3 for v in times.cpu())
    return {**case, "dispatch_ms": d_ms, "combine_ms": c_ms, "dispatch_gbps": nbytes / d_ms / 1e6,
            "combine_gbps": nbytes / c_ms / 1e6, "correct": int(bad.item()) == 0}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    from recipes import cpu_compat

    device = "cpu" if cpu_compat.apply_torch() else "cuda"  # CPU: torch.cuda stand-ins, before megatron
    if device == "cpu":
        cpu_compat.apply_megatron()  # the alltoall dispatcher's split sizes on CPU tensors
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(expert_model_parallel_size=dist.get_world_size())
    results = []
    for case in spec["cases"]:
        if device == "cpu" and case["backend"] in ("deepep", "hybridep"):
            raise SystemExit(f"recipes.dispatch_bench: error: {case['backend']} needs CUDA GPUs")
        results.append(run_case(spec, case, device))
        if dist.get_rank() == 0:
            r = results[-1]
            print(f"dispatch_bench: {r['backend']} {r.get('knobs', {})}: dispatch {r['dispatch_ms']:.3f} ms, "
                  f"combine {r['combine_ms']:.3f} ms, correct={r['correct']}", flush=True)
    if dist.get_rank() == 0:
        Path(argv[1]).write_text(json.dumps({"world_size": dist.get_world_size(), "device": device,
                                             "results": results}, indent=1) + "\n")
    dist.destroy_process_group()
    return 0 if all(r["correct"] for r in results) else 5


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""launcher.records.trace_summary: classification, busy/idle arithmetic, input forms, CLI, and a real trace."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.records import trace_summary as ts

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------ synthetic traces

class Trace:
    """Builds a Chrome trace as torch.profiler writes it: cpu ops on threads, launches, GPU events."""

    def __init__(self):
        self.events: list[dict] = []
        self.corr = 0

    def op(self, name, ts0, dur, tid=1, cat="cpu_op"):
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 100, "tid": tid, "ts": ts0, "dur": dur})

    def launch_kernel(self, name, launch_ts, start, dur, tid=1, stream=7, cat="kernel", linked=True):
        """A cudaLaunchKernel at launch_ts on thread tid, and its GPU event [start, start+dur) on stream."""
        self.corr += 1
        if linked:
            self.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100,
                                "tid": tid, "ts": launch_ts, "dur": 1, "args": {"correlation": self.corr}})
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream, "ts": start, "dur": dur,
                            "args": {"correlation": self.corr, "device": 0, "stream": stream}})

    def under(self, ops: list[str], kernel: str, t: float, dur: float = 1.0, **kw):
        """Nested ops (outermost first) around one launch, with its kernel right after."""
        for depth, name in enumerate(ops):
            self.op(name, t + depth * 0.1, 10 - depth * 0.2, tid=kw.get("tid", 1))
        self.launch_kernel(kernel, t + 5, t + 6, dur, **kw)

    def write(self, path: Path, gz: bool = False) -> Path:
        data = json.dumps({"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100"}],
                           "traceEvents": self.events}).encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        return path


# (enclosing ops outermost first, kernel name, expected category): names as TE, Megatron, aten and HF
# traces show them
CASES = [
    (["_GroupedLinear"], "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "expert_gemm"),
    (["autograd::engine::evaluate_function: _GroupedLinearBackward", "_GroupedLinearBackward"],
     "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "expert_gemm"),
    (["aten::_grouped_mm"], "cutlass::device_kernel<GemmUniversal<cutlass::gemm::GroupProblemShape<>>>",
     "expert_gemm"),
    (["nn.Module: TEFusedMLPWithGroupedLinear_0", "_OperationFuserAutogradFunction"],
     "nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "expert_gemm"),
    (["_OperationFuserAutogradFunction"], "nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "dense_gemm"),  # TEFusedMLP too
    ([], "cutlass::device_kernel<GemmUniversal<cutlass::gemm::GroupProblemShape<>>>", "expert_gemm"),
    (["aten::linear", "aten::addmm"], "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "dense_gemm"),
    (["_LayerNormLinear"], "nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "dense_gemm"),
    (["autograd::engine::evaluate_function: MmBackward0", "MmBackward0", "aten::mm"],
     "cutlass3x_sm90_tensorop_s64x128x16_warpspecialized", "dense_gemm"),
    (["RouterGatingLinearFunction"], "nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "dense_gemm"),
    (["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention"],
     "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>", "attention"),
    (["autograd::engine::evaluate_function: ScaledDotProductCudnnAttentionBackward0"],
     "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3", "attention"),
    (["FusedAttnFunc"], "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ([], "fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    (["_moe_permute_mask_map"], "_permute_kernel", "moe_dispatch"),
    (["_moe_chunk_sort"], "_sort_chunks_by_map_kernel", "moe_dispatch"),
    (["_AllToAll", "c10d::alltoall_base_", "nccl:all_to_all"], "ncclDevKernel_SendRecv(ncclDevKernelArgs)",
     "moe_dispatch"),
    (["aten::index_select"], "indexSelectLargeIndex<c10::BFloat16, long, unsigned int>", "moe_dispatch"),
    (["aten::argsort", "aten::sort"], "cub::DeviceRadixSortOnesweepKernel<Policy900>", "moe_dispatch"),
    (["FusedDispatch"], "deep_ep::intranode::dispatch<8, 768>", "moe_dispatch"),
    (["aten::topk"], "at::native::sbtopk::gatherTopK<float, unsigned int, 2>", "router"),
    (["FusedTopkScoreFunction"], "fused_topk_with_score_function_forward_kernel<float>", "router"),
    (["aten::softmax", "aten::_softmax"], "cunn_SoftMaxForward<4, float, float, float, SoftMaxForwardEpilogue>",
     "router"),
    (["FusedAuxLoss"], "fused_moe_aux_loss_forward_kernel<float>", "router"),
    (["aten::cross_entropy_loss", "aten::log_softmax", "aten::_log_softmax"],
     "cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>", "loss"),
    (["autograd::engine::evaluate_function: LogSoftmaxBackward0", "LogSoftmaxBackward0"],
     "cunn_SoftMaxBackward<4, float, float, float, LogSoftMaxBackwardEpilogue>", "loss"),
    (["_VocabParallelCrossEntropy"], "vectorized_elementwise_kernel<4, MulFunctor<float>>", "loss"),
    (["aten::masked_fill", "aten::masked_fill_"], "elementwise_kernel<128, 4, gpu_kernel_impl_nocast>",
     "moe_dispatch"),  # HF grouped_mm masks sentinel rows
    (["aten::linalg_vector_norm"], "reduce_kernel<512, 1, ReduceOp<float, NormTwoOps<float>>>", "optimizer"),
    ([], "reduce_kernel<512, 1, ReduceOp<float, NormTwoOps<float>>>", "other"),  # a norm, not a norm layer
    (["aten::embedding", "aten::index_select"], "indexSelectLargeIndex<c10::BFloat16, long>", "embedding"),
    (["Optimizer.step#AdamW.step", "aten::_fused_adamw_"],
     "multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor<float, 4>>", "optimizer"),
    (["Optimizer.step#FusedAdam.step", "aten::copy_"], "vectorized_elementwise_kernel<4, copy_kernel>",
     "optimizer"),
    (["aten::_foreach_norm"], "multi_tensor_apply_kernel<LpNormFunctor<float>>", "optimizer"),
    ([], "multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>>", "optimizer"),
    (["c10d::allreduce_", "nccl:all_reduce"], "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "communication"),
    (["_ReduceScatterToSequenceParallelRegion"], "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL", "communication"),
    ([], "ncclDevKernel_AllGather_RING_LL", "communication"),
    (["_RMSNorm"], "rmsnorm_fwd_tuned_kernel<bf16, 4096>", "norm"),
    (["aten::native_layer_norm"], "vectorized_layer_norm_kernel<float, float>", "norm"),
    (["FusedRoPEFunc"], "fused_rope_forward_kernel<bf16>", "rope"),
    (["aten::silu"], "vectorized_elementwise_kernel<4, silu_kernel(TensorIteratorBase&)::lambda>", "activation"),
    (["SwiGLUFunction"], "vectorized_elementwise_kernel<4, MulFunctor<bf16>>", "activation"),
    (["aten::mul"], "vectorized_elementwise_kernel<4, MulFunctor<bf16>>", "other"),
    (["aten::normal_"], "distribution_elementwise_grid_stride_kernel<normal_and_transform>", "other"),
    (["megatron/core/property.py(3): f"], "vectorized_elementwise_kernel<4, AddFunctor<bf16>>", "other"),
    # seen in a real H100 trace of the HF peer (torch 2.11, transformers 5.17, grouped_mm, sdpa, fused AdamW)
    (["aten::_grouped_mm"], "_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9xINS_4gemm6kernel13"
     "GemmUniversalINS5_17GroupProblemShapeIN4cute5tupleIJiiiEEEEENS5_10collec", "expert_gemm"),
    (["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_cudnn_attention",
      "aten::_cudnn_attention_forward"],
     "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0",
     "attention"),
    (["aten::linear", "aten::matmul", "aten::mm"], "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "dense_gemm"),
    (["aten::softmax", "aten::to", "aten::_to_copy", "aten::copy_"],
     "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "router"),
    (["aten::sort", "aten::sort"], "void at_cuda_detail::cub::detail::radix_sort::DeviceRadixSortHistogramKernel<>",
     "moe_dispatch"),
    (["autograd::engine::evaluate_function: EmbeddingBackward0", "EmbeddingBackward0", "aten::embedding_backward",
      "aten::embedding_dense_backward", "aten::sort"], "DeviceRadixSortOnesweepKernel<>", "embedding"),
    (["aten::_foreach_norm"], "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<1>,"
     " at::native::LpNormFunctor<c10::BFloat16>>", "optimizer"),
]


@pytest.mark.parametrize("ops,kernel,expected", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_classify(ops, kernel, expected):
    assert ts.classify(" > ".join(ops), kernel) == expected


def test_every_category_is_reachable_and_rules_are_well_formed():
    assert {c for _, _, c in CASES} == set(ts.CATEGORIES) - {"memcpy", "memset"}
    for category, op_re, kernel_re in ts.RULES:
        assert category in ts.CATEGORIES and isinstance(op_re, str) and isinstance(kernel_re, str)
    assert ts.CATEGORIES[-1] == "other"


def test_enclosing_ops_by_time_on_the_launching_thread():
    t = Trace()
    t.op("Outer", 0, 100)
    t.op("Inner", 10, 40)       # [10, 50]
    t.op("OtherThread", 0, 100, tid=2)
    t.op("Sibling", 60, 5)      # [60, 65]: ends before the launch at 70
    t.launch_kernel("k1", 20, 200, 1)   # inside Outer > Inner
    t.launch_kernel("k2", 70, 210, 1)   # inside Outer only
    t.launch_kernel("k3", 10, 220, 1)   # at Inner's very start: contained
    t.launch_kernel("k4", 150, 230, 1)  # outside every op
    got = ts.enclosing_ops(t.events)
    assert got == {1: "Outer > Inner", 2: "Outer", 3: "Outer > Inner", 4: ""}


def test_enclosing_ops_with_rounding_overlap():
    """Timestamps rounded apart can make ops overlap without nesting: an op that ended is not enclosing."""
    t = Trace()
    t.op("A", 0, 10)       # [0, 10]
    t.op("B", 9.5, 10.5)   # [9.5, 20]: starts inside A, ends after it
    t.launch_kernel("k", 15, 100, 1)
    assert ts.enclosing_ops(t.events) == {1: "B"}


def test_compiled_graph_hashes_are_not_matched():
    t = Trace()
    t.op("## Call CompiledFxGraph fropeglux7adamsilu ##", 0, 10, cat="user_annotation")
    t.launch_kernel("triton_poi_fused_add_0", 5, 100, 1)
    assert ts.enclosing_ops(t.events) == {1: "## Call CompiledFxGraph  ##"}
    assert ts.classify(ts.enclosing_ops(t.events)[1], "triton_poi_fused_add_0") == "other"


def test_annotations_and_launches_on_the_backward_thread(tmp_path):
    """Backward kernels are launched from autograd's thread: its ops, not the main thread's, name them."""
    t = Trace()
    t.op("ProfilerStep#3", 0, 1000)
    t.under(["autograd::engine::evaluate_function: _GroupedLinearBackward", "_GroupedLinearBackward"],
            "nvjet_tst_128x256", 100, tid=9)
    t.under(["Optimizer.step#AdamW.step", "aten::_fused_adamw_"], "multi_tensor_apply_kernel<Adam>", 300)
    t.op("Optimizer.step#AdamW.step", 300, 10, cat="user_annotation")
    s = ts.summarize(t.write(tmp_path / "t.json"))
    assert s["categories"]["expert_gemm"]["count"] == 1
    assert s["categories"]["optimizer"]["count"] == 1
    assert s["unlinked_gpu_events"] == 0


def _overlap_trace() -> Trace:
    t = Trace()
    t.under(["_GroupedLinear"], "grouped_gemm_a", 0)      # ops [0, 10], launch at 5
    t.events[-1].update(ts=1000, dur=10)                  # stream 7: [1000, 1010)
    t.launch_kernel("my_custom_kernel", 21, 1020, 10, stream=7)       # stream 7: [1020, 1030), launched outside any op
    t.launch_kernel("ncclDevKernel_AllGather", 22, 1005, 20, stream=8)  # stream 8: [1005, 1025) overlaps both
    t.launch_kernel("Memcpy DtoH (Device -> Pinned)", 23, 1040, 10, stream=9, cat="gpu_memcpy")
    t.launch_kernel("Memset (Device)", 24, 1055, 5, stream=9, cat="gpu_memset", linked=False)
    return t


def test_busy_idle_not_double_counting_overlap(tmp_path):
    s = ts.summarize(_overlap_trace().write(tmp_path / "t.json"), steps=2)
    # union: [1000, 1030) + [1040, 1050) + [1055, 1060) = 45 us; wall [1000, 1060) = 60 us
    assert s["status"] == "ok" and s["device_name"] == "NVIDIA H100"
    assert s["wall_ms"] == pytest.approx(0.060)
    assert s["busy_ms"] == pytest.approx(0.045)
    assert s["idle_ms"] == pytest.approx(0.015) and s["idle_share"] == pytest.approx(0.25)
    assert s["kernel_ms"] == pytest.approx(0.055)  # summed: the overlap counts twice here, by design
    assert s["gpu_events"] == 5 and s["kernels"] == 3 and s["unlinked_gpu_events"] == 1
    c = s["categories"]
    assert c["expert_gemm"]["kernel_ms"] == pytest.approx(0.010)
    assert c["communication"]["kernel_ms"] == pytest.approx(0.020)
    assert c["communication"]["share_of_busy"] == pytest.approx(20 / 45)
    assert c["memcpy"]["count"] == 1 and c["memset"]["count"] == 1
    assert c["other"]["top"][0]["name"] == "my_custom_kernel"  # unmatched names stay visible
    assert s["per_step"]["busy_ms"] == pytest.approx(0.0225)
    assert c["communication"]["per_step"] == {"kernel_ms": pytest.approx(0.010), "count": 0.5}
    assert s["devices"][0]["streams"] == {"7": 0.02, "8": 0.02, "9": 0.015}
    assert list(c) == sorted(c, key=lambda k: -c[k]["kernel_ms"])  # largest first
    assert set(c) == set(ts.CATEGORIES)


def test_short_names():
    assert ts.short("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>") == \
        "cunn_SoftMaxForward<4, float>"
    assert ts.short("x" * 200, 20) == "x" * 17 + "..." and "|" not in ts.short("a|b")


def test_top_three_by_time(tmp_path):
    t = Trace()
    for i, (name, dur) in enumerate([("a", 1), ("b", 5), ("c", 3), ("d", 2), ("b", 1)]):
        t.launch_kernel(name, i, 100 + 10 * i, dur)
    top = ts.summarize(t.write(tmp_path / "t.json"))["categories"]["other"]["top"]
    assert [(x["name"], x["count"]) for x in top] == [("b", 2), ("c", 1), ("d", 1)]
    assert top[0]["ms"] == pytest.approx(0.006)


def test_gz_and_bare_list_inputs(tmp_path):
    t = _overlap_trace()
    plain = ts.summarize(t.write(tmp_path / "t.json"))
    gz = ts.summarize(t.write(tmp_path / "t.json.gz", gz=True))
    assert {k: v for k, v in gz.items() if k != "trace"} == {k: v for k, v in plain.items() if k != "trace"}
    (tmp_path / "list.json").write_text(json.dumps(t.events))
    assert ts.summarize(tmp_path / "list.json")["busy_ms"] == pytest.approx(plain["busy_ms"])


def test_cli_writes_json_and_md(tmp_path):
    trace = _overlap_trace().write(tmp_path / "t.json.gz", gz=True)
    proc = subprocess.run([sys.executable, "-m", "launcher.records.trace_summary", str(trace), "--steps", "2",
                           "--json", str(tmp_path / "s.json"), "--md", str(tmp_path / "s.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| communication |" in proc.stdout and "idle: 0.015 ms (25.0% of wall)" in proc.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["schema"] == ts.SCHEMA and s["steps"] == 2 and s["categories"]["expert_gemm"]["count"] == 1
    assert (tmp_path / "s.md").read_text() == proc.stdout.rstrip("\n") + "\n"


def test_cli_errors(tmp_path):
    (tmp_path / "bad.json").write_text("not json")
    assert ts.main([str(tmp_path / "bad.json")]) == 2
    assert ts.main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert ts.main([str(tmp_path / "other.json")]) == 2
    with pytest.raises(SystemExit):
        ts.main([str(tmp_path / "bad.json"), "--steps", "0"])


def test_import_needs_no_torch():
    code = "import sys, launcher.records.trace_summary; print(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# ------------------------------------------------------------------------------------------- real trace

@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory) -> Path:
    """A real torch.profiler trace (CPU-only torch): matmul + softmax, backward, fused AdamW step."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    path = tmp_path_factory.mktemp("real") / "cpu_trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x = torch.randn(8, 32)
        loss = torch.softmax(model(x) @ x.T, dim=-1).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    prof.export_chrome_trace(str(path))
    return path


def test_real_cpu_trace_says_no_gpu_kernels(cpu_trace, tmp_path):
    s = ts.summarize(cpu_trace, steps=1)
    assert s["status"] == "no_gpu_kernels" and s["gpu_events"] == 0 and s["cpu_ops"] > 10
    assert "no GPU kernels in trace" in s["message"]
    assert ts.main([str(cpu_trace), "--json", str(tmp_path / "s.json"), "--md", str(tmp_path / "s.md")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "no_gpu_kernels"
    assert "no GPU kernels in trace" in (tmp_path / "s.md").read_text()


def test_real_trace_nesting_classifies_injected_launches(cpu_trace, tmp_path):
    """Put launches + kernels inside ops of the real trace: its real nesting (the Optimizer.step user
    annotation around the fused AdamW op, aten::softmax around aten::_softmax, aten::matmul around
    aten::mm) must name them, also where the kernel's name alone would say nothing."""
    events, top = ts.load_events(cpu_trace)
    ops: dict[str, dict] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ts.OP_CATS:
            ops.setdefault(e["name"].split("#")[0], e)  # first (forward) occurrence of each name
    assert ops["Optimizer.step"]["cat"] == "user_annotation"
    wanted = {  # host op -> (injected kernel name, category)
        "Optimizer.step": ("vectorized_elementwise_kernel<4, copy_kernel>", "optimizer"),
        "aten::_fused_adamw_": ("multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
        "aten::_softmax": ("cunn_SoftMaxForward<4, float, SoftMaxForwardEpilogue>", "router"),
        "aten::mm": ("sm90_xmma_gemm_f32f32_f32f32_f32_nn_n", "dense_gemm"),
    }
    for corr, name in enumerate(wanted, start=10**6):
        host = ops[name]
        t = host["ts"] + min(host["dur"] / 2, 0.5)
        events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": host["pid"],
                       "tid": host["tid"], "ts": t, "dur": 0.1, "args": {"correlation": corr}})
        events.append({"ph": "X", "cat": "kernel", "name": wanted[name][0], "pid": 0, "tid": 7,
                       "ts": 1e3 * corr, "dur": 2.0, "args": {"correlation": corr, "device": 0, "stream": 7}})
    linked = ts.enclosing_ops(events)
    assert linked[10**6].startswith("Optimizer.step#AdamW.step")
    assert linked[10**6 + 2].endswith("aten::softmax > aten::_softmax")
    (tmp_path / "t.json").write_text(json.dumps({**top, "traceEvents": events}))
    s = ts.summarize(tmp_path / "t.json")
    assert s["unlinked_gpu_events"] == 0
    for kernel, category in wanted.values():
        assert kernel in [t["name"] for t in s["categories"][category]["top"]], (kernel, category)
    assert s["categories"]["optimizer"]["count"] == 2

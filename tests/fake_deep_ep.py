"""A `deep_ep` package written to a directory, for the doctor's tests (tests/unit/recipes/test_preflight.py,
tests/unit/tools/test_doctor.py): classes with the methods and arguments megatron-core 0.19.2's fused_a2a.py
calls, written for these tests from those calls (no DeepEP code), with no behaviour. Tests break one signature
to set a condition at the import boundary."""
from __future__ import annotations

import textwrap
from pathlib import Path

# what megatron-core 0.19.2 calls, with the defaults its optional arguments need
GOOD_INIT = textwrap.dedent('''
    class Buffer:
        num_sms = 20

        def __init__(self, group, num_nvl_bytes=0, num_rdma_bytes=0, low_latency_mode=False,
                     num_qps_per_rank=24, allow_nvlink_for_low_latency_mode=True, allow_mnnvl=False,
                     explicitly_destroy=False):
            self.group = group

        @staticmethod
        def set_num_sms(new_num_sms):
            Buffer.num_sms = new_num_sms

        @staticmethod
        def get_dispatch_config(num_ranks):
            return None

        @staticmethod
        def get_combine_config(num_ranks):
            return None

        def get_dispatch_layout(self, topk_idx, num_experts, previous_event=None, async_finish=False,
                                allocate_on_comm_stream=False):
            return None

        def dispatch(self, x, handle=None, num_tokens_per_rank=None, num_tokens_per_rdma_rank=None,
                     is_token_in_rank=None, num_tokens_per_expert=None, topk_idx=None, topk_weights=None,
                     expert_alignment=1, num_worst_tokens=0, config=None, previous_event=None, async_finish=False,
                     allocate_on_comm_stream=False):
            return None

        def combine(self, x, handle, topk_weights=None, bias=None, config=None, previous_event=None,
                    async_finish=False, allocate_on_comm_stream=False):
            return None


    class HybridEPBuffer:
        def __init__(self, group, hidden_dim, max_num_of_tokens_per_rank, num_local_experts, use_fp8=False,
                     num_sms_dispatch_api=None, num_sms_combine_api=None, num_sms_preprocessing_api=None,
                     num_blocks_permute=None, num_blocks_unpermute=None):
            self.group = group

        def dispatch_with_permute(self, *, hidden, routing_map=None, probs=None, scaling_factor=None,
                                  num_of_experts_per_rank=None, pad_multiple=None, num_permuted_tokens=None,
                                  handle=None, non_blocking=False, fuse_permute_dispatch=False):
            return None

        def combine_with_unpermute(self, *, hidden, probs=None, handle=None, pad_multiple=None,
                                   fuse_unpermute_combine=False):
            return None
''')
UTILS = "class EventHandle:\n    pass\n\n\nclass EventOverlap:\n    pass\n"


def write_deep_ep(root: Path, init: str = GOOD_INIT, utils: str = UTILS) -> Path:
    pkg = root / "deep_ep"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    (pkg / "utils.py").write_text(utils)
    return root


# HybridEP 3f601f7 (the old container pin): dispatch_with_permute without non_blocking
NO_NON_BLOCKING = GOOD_INIT.replace("handle=None, non_blocking=False, ", "handle=None, ")
assert NO_NON_BLOCKING != GOOD_INIT

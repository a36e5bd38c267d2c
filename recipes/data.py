"""Dataset provider and forward step for MoE GPT pretraining (mock or indexed data)."""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core import mpu
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.utils import get_blend_from_list
from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
from megatron.core.utils import get_batch_on_this_cp_rank
from megatron.training import get_args

from launcher.records.indexed import IndexedDataError, parse_blend, read_idx
from recipes import profiling


def datasets_provider(train_val_test_num_samples, vp_stage=None):
    """Build train/valid/test datasets. Every rank builds them (mock data is generated, indexed data
    is memory-mapped), so TP ranks read identical batches without a broadcast."""
    args = get_args()
    config = GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=get_blend_from_list(args.data_path),  # None with --mock-data -> config.mock is True
        # data.train_paths/valid_paths/test_paths: one blend per split, and no split (Megatron refuses both)
        blend_per_split=_per_split(args),
        split=None if _per_split(args) else args.split,
        tokenizer=build_tokenizer(args),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=args.create_attention_mask_in_dataloader,
    )
    cls = MockGPTDataset if args.mock_data else GPTDataset
    return BlendedMegatronDatasetBuilder(cls, train_val_test_num_samples, lambda: True, config).build()


datasets_provider.is_distributed = True  # Megatron calls the provider on every rank


def _per_split(args) -> Optional[list]:
    paths = [args.train_data_path, args.valid_data_path, args.test_data_path]
    return [get_blend_from_list(p) for p in paths] if any(paths) else None


def prefixes(args) -> list[str]:
    """Every data prefix the argv names (--data-path or the per-split paths), without the weights."""
    items = [*(args.data_path or []), *(args.train_data_path or []), *(args.valid_data_path or []),
             *(args.test_data_path or [])]
    try:
        return [p for _, p in parse_blend(items)]
    except IndexedDataError:  # Megatron's own parser decides about a list it cannot read as a blend
        return [str(item) for item in items if not str(item).replace(".", "", 1).isdigit()]


def check_files(args) -> Optional[str]:
    """The data files on this node, before the model is built: the check the login node could not make when
    the paths were not visible there (Slurm, containers). None when every prefix is sound, else one line."""
    if args.mock_data:
        return None
    for prefix in prefixes(args):
        try:
            read_idx(prefix)
        except IndexedDataError as e:
            return (f"data prefix {prefix!r}: {e}. Fix: point data.paths (or data.train_paths/valid_paths/"
                    f"test_paths) at a prefix moe-prepare-data wrote, as this node sees it")
    return None


def next_batch(data_iterator) -> dict:
    batch = next(data_iterator)
    device = torch.cuda.current_device()
    batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if mpu.get_context_parallel_world_size() > 1:
        # zig-zag split of the sequence over CP ranks (load-balanced causal attention)
        batch = get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=mpu.get_context_parallel_group())
    return batch


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """One micro-batch forward; the loss function returns (sum, token count, log dict) so Megatron
    normalises per token across micro-batches and data-parallel ranks.

    With the EP all-to-all overlap (--overlap-moe-expert-parallel-comm) Megatron's combined 1F1B schedule
    calls this with return_schedule_plan=True and wants the model's schedule plan in place of its output:
    it then runs the layers itself, one micro batch's dispatch/combine beside another's compute."""
    profiling.maybe_step(get_args())  # train.kernel_profile's window (no-op unless MOE_PROFILE_STEPS is set)
    batch = next_batch(data_iterator)
    loss_mask = batch["loss_mask"]
    run = model.build_schedule_plan if return_schedule_plan else model
    output = run(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                 labels=batch["labels"], loss_mask=loss_mask)

    def loss_func(output_tensor):
        mask = loss_mask.view(-1).float()
        loss = torch.sum(output_tensor.view(-1).float() * mask)
        num_tokens = mask.sum().to(torch.int)
        return loss, num_tokens, {"lm loss": torch.cat([loss.detach().view(1), num_tokens.view(1)])}

    return output, loss_func

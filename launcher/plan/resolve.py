"""Resolve every "auto"/None field into a concrete fact, in one visible place.

The user's config is never mutated: `resolve()` returns a frozen `Resolved` with the facts the
rest of the launcher needs, and `notes` saying how each automatic choice was made (they are printed
and written to the run directory).
"""
from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Optional

from launcher.errors import ConfigError
from launcher.plan.probe import MachineProbe
from launcher.plan.tuned import SAFE, Stack, Tuned, resolve_tuned
from launcher.config.choices import Device, ExecutorKind, TransformerImpl
from launcher.config.schema import RunConfig


@dataclass(frozen=True)
class Resolved:
    device: str
    """cuda or cpu."""
    nproc_per_node: int
    world_size: int
    transformer_impl: str
    sequence_parallel: bool
    pipeline_layout: Optional[str]
    gradient_accumulation_fusion: bool
    notes: tuple[str, ...] = field(default=())
    tuned: Tuned = field(default=SAFE)
    """The tuned knobs' values (launcher/plan/tuned.py); the default is the safe choice of each."""

    def data_parallel_size(self, cfg: RunConfig) -> int:
        p = cfg.parallel
        return self.world_size // (p.tp * p.pp * p.cp)


def _device(cfg: RunConfig, probe: MachineProbe) -> tuple[str, str]:
    c = cfg.cluster
    if c.device != Device.auto:
        return str(c.device), f"device={c.device} (cluster.device)"
    if c.gpus_per_node is not None:
        return "cuda", "device=cuda: cluster.gpus_per_node is set"
    if c.executor == ExecutorKind.slurm:
        # this is a login node: what it has says nothing about the compute nodes
        return "cuda", "device=cuda: Slurm compute nodes (set cluster.device=cpu for CPU nodes)"
    if probe.gpus > 0:
        return "cuda", f"device=cuda: {probe.gpus} GPU(s) visible on this machine"
    return "cpu", "device=cpu: no GPU visible (nvidia-smi); CPU runs use gloo and the local spec"


def _transformer_impl(cfg: RunConfig, device: str, probe: MachineProbe) -> tuple[str, Optional[str]]:
    impl = cfg.model.transformer_impl
    if impl != TransformerImpl.auto:
        return str(impl), None
    if device == "cpu":
        return "local", "transformer_impl=local: CPU run (Transformer Engine needs CUDA)"
    if probe.gpus > 0 and not probe.transformer_engine and cfg.cluster.executor == ExecutorKind.local:
        # this machine is the one that runs: we can see TE is missing here (Slurm nodes and container
        # images have their own environment)
        return "local", ("transformer_impl=local: transformer_engine is not installed here "
                         "(pip install -e '.[gpu]' for fused attention and grouped GEMM)")
    return "transformer_engine", None


_PATTERN = re.compile(r"[,\d\[\]()+*]+")  # what Megatron's _eval_pattern accepts


def eval_layer_pattern(text: str) -> list[int]:
    """A Megatron list expression such as "([0]*3+[1]*58)" -> its list (Megatron evaluates the same
    characters: digits, brackets, parentheses, + * and commas)."""
    if not _PATTERN.fullmatch(text.replace(" ", "")):
        raise ValueError(f"not a Megatron layer pattern: {text!r}")
    value = eval(text, {"__builtins__": {}}, {})  # noqa: S307 - only the characters above
    if not isinstance(value, list) or any(v not in (0, 1) for v in value):
        raise ValueError(f"layer pattern {text!r} must be a list of 0 and 1")
    return value


def moe_layer_freq(cfg: RunConfig) -> str:
    """The --moe-layer-freq value: model.moe_first_k_dense (dense first K layers, following
    model.num_layers) or model.moe_layer_freq as written."""
    m = cfg.model
    k = m.moe_first_k_dense
    return m.moe_layer_freq if not k else f"([0]*{k}+[1]*{m.num_layers - k})"


def moe_layer_pattern(cfg: RunConfig) -> list[int]:
    """1 (MoE) or 0 (dense MLP) for each decoder layer, as Megatron builds them."""
    text, n = moe_layer_freq(cfg), cfg.model.num_layers
    if "[" in text:
        return eval_layer_pattern(text)
    freq = int(text)
    return [1 if i % freq == 0 else 0 for i in range(n)]


def linear_attention_pattern(cfg: RunConfig) -> list[int]:
    """1 (linear attention, gated delta net) or 0 (full attention) for each decoder layer; all 0
    without an experimental attention variant."""
    m = cfg.model
    if m.experimental_attention_variant != "gated_delta_net" or m.linear_attention_freq is None:
        return [0] * m.num_layers
    text = m.linear_attention_freq
    if "[" in text:
        return eval_layer_pattern(text)
    freq = int(text)
    return [0 if (i + 1) % freq == 0 else 1 for i in range(m.num_layers)]


def balanced_layout(num_layers: int, pp: int, vpp: int, mtp: int = 0) -> str:
    """Megatron layout string over pp*vpp stages, counting embedding, loss and each MTP layer as one
    layer each (MTP layers sit in the last stage, before the loss).

    Example: 94 layers, pp 8, vpp 4 -> 32 stages, (94 + 2) / 32 = 3 units each:
    "Ett|(ttt|)*30ttL" (first and last stage carry 2 layers plus embedding / loss).
    """
    stages = pp * vpp
    units = num_layers + 2 + mtp
    base, rem = divmod(units, stages)
    sizes = [base] * stages
    order = list(range(1, stages - 1)) + [0, stages - 1] if stages > 2 else list(range(stages))
    for i in order[:rem]:
        sizes[i] += 1
    layers = list(sizes)
    layers[0] -= 1
    layers[-1] -= 1 + mtp
    while mtp and layers[-1] < 0 and max(layers[:-1]) > 1:
        # the last stage holds the loss and every MTP layer: it takes a decoder layer's place
        layers[layers.index(max(layers[:-1]))] -= 1
        layers[-1] += 1
    if stages == 1:
        layers = [num_layers]
    if min(layers) < 0:
        raise ConfigError("parallel.pipeline_layout", "auto",
                          f"{num_layers} layers cannot fill {stages} pipeline stages",
                          "lower parallel.pp or parallel.vpp")
    texts = ["t" * n for n in layers]
    texts[0] = "E" + texts[0]
    texts[-1] = texts[-1] + "m" * mtp + "L"
    return _compress(texts)


def _compress(stages: list[str]) -> str:
    """Join stages with '|', writing runs of identical middle stages as (x|)*n."""
    if len(stages) == 1:
        return stages[0]
    parts, mid, i = [stages[0] + "|"], stages[1:-1], 0
    while i < len(mid):
        j = i
        while j + 1 < len(mid) and mid[j + 1] == mid[i]:
            j += 1
        n = j - i + 1
        parts.append(f"({mid[i]}|)*{n}" if n > 1 else mid[i] + "|")
        i = j + 1
    parts.append(stages[-1])
    return "".join(parts)


def _layout(cfg: RunConfig) -> tuple[Optional[str], Optional[str]]:
    p, m = cfg.parallel, cfg.model
    if p.pipeline_layout != "auto":
        return p.pipeline_layout, None
    vpp = p.vpp or 1
    mtp = m.mtp_num_layers or 0
    if m.num_layers % (p.pp * vpp) == 0 and mtp == 0:
        return None, f"pipeline_layout=auto: {m.num_layers} layers split evenly over {p.pp * vpp} stages"
    text = balanced_layout(m.num_layers, p.pp, vpp, mtp)
    return text, f"pipeline_layout=auto -> {text!r}"


def resolve(cfg: RunConfig, probe: MachineProbe) -> Resolved:
    """Turn the config's automatic choices into facts for this launch."""
    device, note = _device(cfg, probe)
    notes = [note]
    c = cfg.cluster
    if c.gpus_per_node is not None:
        nproc = c.gpus_per_node
    elif device == "cuda" and c.executor == ExecutorKind.slurm:
        nproc = cfg.hardware.gpus_per_node
        notes.append(f"tasks per node={nproc}: hardware.gpus_per_node ({cfg.hardware.name})")
    elif device == "cuda":
        nproc = probe.gpus
        notes.append(f"gpus_per_node={nproc} (detected)")
    else:
        nproc = c.nproc_cpu
    impl, impl_note = _transformer_impl(cfg, device, probe)
    sp = cfg.parallel.sequence_parallel
    if sp is None:
        sp = cfg.parallel.tp > 1
    layout, layout_note = _layout(cfg)
    gaf_cfg = cfg.train.gradient_accumulation_fusion
    if gaf_cfg not in ("auto", "true", "false"):
        raise ConfigError("train.gradient_accumulation_fusion", gaf_cfg, "must be auto, true or false",
                          "pick one of those")
    if gaf_cfg == "auto":
        gaf = device == "cuda" and probe.apex_fused_wgrad
        notes.append(f"gradient_accumulation_fusion={str(gaf).lower()}: APEX fused wgrad kernel "
                     f"{'found' if probe.apex_fused_wgrad else 'not found'}")
    else:
        gaf = gaf_cfg == "true"
    notes += [n for n in (impl_note, layout_note, _data_note(cfg)) if n]
    tuned, tuned_notes = resolve_tuned(cfg, Stack(device=device, transformer_impl=impl, world_size=c.nodes * nproc))
    return Resolved(device=device, nproc_per_node=nproc, world_size=c.nodes * nproc,
                    transformer_impl=impl, sequence_parallel=sp, pipeline_layout=layout,
                    gradient_accumulation_fusion=gaf, notes=tuple(notes + tuned_notes), tuned=tuned)


def _data_note(cfg: RunConfig) -> Optional[str]:
    """The split's default, or the data prefixes this node cannot see (Slurm, containers): plan/rules/data.py
    checks the visible ones, recipes/data.py the rest on rank 0 before the model is built."""
    d = cfg.data
    words = [str(item) for items in (d.paths, d.train_paths, d.valid_paths, d.test_paths) for item in items]
    unseen = [w for w in words if not re.fullmatch(r"[0-9.eE+-]+", w) and not Path(w).expanduser().parent.is_dir()]
    if unseen and cfg.cluster.executor != "local":
        return (f"data: {len(unseen)} prefix(es) not visible from this node ({unseen[0]}...): their files are "
                "checked on rank 0 before the model is built")
    if d.kind == "indexed" and d.paths and d.split is None and cfg.train.eval_iters == 0:
        return "data.split=100,0,0: train.eval_iters=0 reads no validation or test split"
    return None

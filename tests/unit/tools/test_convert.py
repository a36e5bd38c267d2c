"""moe-convert's login side (launcher/tools/convert.py, convert_io.py, convert_hf.py): the HF config checked
field by field against the composed model, the config an export writes, the world-1 plan, and every refusal as
one line before anything heavy starts. The conversions themselves run in tests/e2e/test_convert_cpu.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_cfg
from launcher.errors import ConfigError
from launcher.tools import convert, convert_hf, convert_io

TINY_QWEN = ["model=tiny_moe", "model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
             "model.kv_channels=16", "model.num_experts=4", "model.moe_ffn_hidden_size=32", "model.vocab_size=512"]


def _qwen_hf(**changes) -> dict:
    """config.json as transformers 5.17 writes a Qwen3MoeConfig matching TINY_QWEN (tests/e2e made the same)."""
    hf = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
          "vocab_size": 512, "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
          "tie_word_embeddings": False, "num_experts_per_tok": 2, "num_local_experts": 4,
          "moe_intermediate_size": 32, "norm_topk_prob": True, "intermediate_size": 128, "hidden_act": "silu",
          "attention_bias": False, "decoder_sparse_step": 1, "mlp_only_layers": []}
    hf.update(changes)
    return hf


def _lines(errors: list[ConfigError]) -> list[str]:
    return [str(e) for e in errors]


def test_a_matching_hf_config_has_no_mismatch():
    assert convert_hf.mismatches(make_cfg(TINY_QWEN).model, _qwen_hf(), "Qwen3MoeForCausalLM") == []


def test_each_mismatching_field_is_one_line_with_its_fix():
    hf = _qwen_hf(num_local_experts=8, rope_parameters={"rope_theta": 1e6, "rope_type": "default"},
                  norm_topk_prob=False, tie_word_embeddings=True)
    lines = _lines(convert_hf.mismatches(make_cfg(TINY_QWEN).model, hf, "Qwen3MoeForCausalLM"))
    assert len(lines) == 4, lines
    assert any("config.json num_experts=8" in ln and "Fix: add model.num_experts=8" in ln for ln in lines), lines
    assert any("rope_theta" in ln and "model.rotary_base=1000000" in ln for ln in lines), lines
    assert any("norm_topk_prob" in ln and "model.moe_router_pre_softmax=true" in ln for ln in lines), lines
    assert any("tie_word_embeddings" in ln and "model.untie_embeddings_and_output_weights=false" in ln
               for ln in lines), lines


def test_qwen3_moe_needs_qk_norm_and_rope_scaling_is_refused():
    model = make_cfg([*TINY_QWEN, "model.qk_layernorm=false"]).model
    hf = _qwen_hf(rope_parameters={"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0})
    lines = _lines(convert_hf.mismatches(model, hf, "Qwen3MoeForCausalLM"))
    assert any(ln.startswith("model.qk_layernorm=False") for ln in lines), lines
    assert any("rope_parameters='yarn'" in ln for ln in lines), lines


@pytest.mark.parametrize("arch, why", [("DeepseekV3ForCausalLM", "multi-latent attention"),
                                       ("Qwen2MoeForCausalLM", "no Qwen2-MoE mapping"),
                                       ("LlamaForCausalLM", "Qwen3MoeForCausalLM and MixtralForCausalLM only")])
def test_unsupported_architectures_are_refused_with_the_reason(arch, why):
    with pytest.raises(ConfigError) as e:
        convert_hf.architecture({"architectures": [arch]}, "/m")
    assert why in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("overrides, arch", [(["model=qwen3_30b_a3b"], "Qwen3MoeForCausalLM"),
                                             (["model=qwen3_235b_a22b"], "Qwen3MoeForCausalLM"),
                                             (["model=mixtral_8x7b"], "MixtralForCausalLM"),
                                             (["model=mixtral_8x22b"], "MixtralForCausalLM")])
def test_the_config_an_export_writes_describes_the_model(overrides, arch):
    model = make_cfg(overrides).model
    assert convert_hf.family_of(model) == arch
    hf = convert_hf.hf_config(model, arch)
    assert convert_hf.mismatches(model, hf, arch) == []
    assert hf["architectures"] == [arch] and hf["num_hidden_layers"] == model.num_layers


def test_qwen3_30b_a3b_config_json_as_published_matches_our_model():
    """Qwen/Qwen3-30B-A3B's config.json (the fields that shape or change the model), as the hub serves it."""
    published = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 48,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
                 "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
                 "num_experts_per_tok": 8, "num_experts": 128, "moe_intermediate_size": 768, "norm_topk_prob": True,
                 "intermediate_size": 6144, "hidden_act": "silu", "attention_bias": False, "decoder_sparse_step": 1,
                 "mlp_only_layers": []}
    model = make_cfg(["model=qwen3_30b_a3b"]).model
    assert convert_hf.mismatches(model, published, "Qwen3MoeForCausalLM") == []


@pytest.mark.parametrize("overrides, field", [(["model=deepseek_v3"], "model.multi_latent_attention"),
                                              (["model=qwen2_57b_a14b"], "model.moe_shared_expert_intermediate_size")])
def test_layouts_no_family_has_are_refused_by_field(overrides, field):
    model = make_cfg(overrides).model
    arch = convert_hf.family_of(model)
    fields = [e.field for e in convert_hf.mismatches(model, convert_hf.hf_config(model, arch), arch)]
    assert field in fields, fields


def test_megatrons_embedding_rows_must_not_outnumber_the_hf_ones():
    assert convert_io.check_vocab(make_cfg(["model=qwen3_30b_a3b"]), 151936) == 151936  # 1187 x 128
    with pytest.raises(ConfigError) as e:
        convert_io.check_vocab(make_cfg([*TINY_QWEN, "model.vocab_size=500"]), 500)  # padded to 512 rows
    assert "build 512 embedding rows; the HF embedding has 500" in str(e.value)
    assert "model.make_vocab_size_divisible_by=4" in str(e.value)


def test_world_one_keeps_the_model_and_drops_the_layout():
    cfg = make_cfg(["model=qwen3_30b_a3b", "model.num_layers=4", "parallel=tp2_pp2_ep8", "dispatcher=deepep",
                    "recompute=full", "precision=fp8_blockwise", "train.checkpoint.keep_last=1"])
    one = convert_io.world_one(cfg, gpus=0)
    p = one.parallel
    assert (p.tp, p.pp, p.ep, p.etp, p.cp, p.vpp) == (1, 1, 1, 1, 1, None)
    assert one.model.num_layers == 4 and one.model.transformer_impl == "local" and not one.model.moe_grouped_gemm
    assert one.precision.name == "bf16" and one.precision.fp8_recipe is None
    assert str(one.dispatcher.type) == "alltoall" and str(one.recompute.granularity) == "none"
    assert not one.train.checkpoint.enabled and one.cluster.device == "cpu"


def test_world_one_plan_is_one_cpu_process_with_the_local_spec():
    _, plan = convert_io.plan_world_one(make_cfg(TINY_QWEN))
    argv = plan.argv
    assert argv[argv.index("--expert-model-parallel-size") + 1] == "1"
    assert argv[argv.index("--transformer-impl") + 1] == "local"
    assert "--moe-grouped-gemm" not in argv and "--save" not in argv and "--load" not in argv
    assert plan.resolved.world_size == 1


@pytest.mark.parametrize("args, expected", [
    ([], "needs a direction first"),
    (["import", "--hf", "x"], "--out=None: is required"),
    (["export", "--ckpt", "r", "--out"], "--out=None: needs a value"),
    (["import", "--hf", "x", "--out", "y", "--bogus", "1"], "--bogus=None: is not an option of moe-convert import"),
])
def test_bad_command_lines_are_one_line(args, expected):
    with pytest.raises(ConfigError) as e:
        convert.parse(args)
    assert expected in str(e.value)


def test_missing_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelopt" else real(name, *a))
    assert convert.main(["import", "--hf", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["moe-convert: error: moe-convert='modelopt extra': needs modelopt, not installed here. "
                   "Fix: pip install -e '.[modelopt]'"]


def test_a_mismatching_hf_checkpoint_prints_one_line_per_field(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(_qwen_hf(num_hidden_layers=3, hidden_size=96)))
    assert convert.main(["import", "--hf", str(hf), "--out", str(tmp_path / "out"), *TINY_QWEN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(ln.startswith("moe-convert: error: config.json ") for ln in err), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_config_json_missing_fields_names_each(tmp_path, capsys):
    """A hand-written or truncated config.json: was a KeyError traceback ('hidden_size')."""
    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = _qwen_hf()
    del cfg["hidden_size"], cfg["head_dim"]
    (hf / "config.json").write_text(json.dumps(cfg))
    assert convert.main(["import", "--hf", str(hf), "--out", str(tmp_path / "out"), *TINY_QWEN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "moe-convert: error: config.json hidden_size=None: is missing. Fix: use the config.json the checkpoint " \
        "was saved with (transformers writes every field)" in err and "Traceback" not in "\n".join(err)


def test_unsupported_family_is_one_line(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"]}))
    assert convert.main(["import", "--hf", str(hf), "--out", str(tmp_path / "out"), "model=deepseek_v3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "architecture DeepseekV3ForCausalLM is not supported" in err[0]


def test_an_existing_out_directory_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(ConfigError, match="nothing is overwritten"):
        convert_io.check_out(tmp_path / "out")


def _run_dir(tmp_path: Path, overrides: list[str]) -> Path:
    """What a run directory holds for export: plan.json (its moe-launch command, argv) and a complete checkpoint."""
    from launcher.plan.plan import build_plan
    from conftest import PROBE

    cfg = make_cfg(overrides)
    cfg.launch.megatron_validate = False
    run = tmp_path / "run"
    (run / "checkpoints" / "iter_0000010").mkdir(parents=True)
    (run / "checkpoints" / "iter_0000010" / "metadata.json").write_text("{}")
    (run / "checkpoints" / "iter_0000020").mkdir()  # a save that was killed
    plan = build_plan(cfg, PROBE)
    (run / "plan.json").write_text(json.dumps({"moe_launch": ["moe-launch", *overrides], "argv": plan.argv}))
    return run


def test_export_refusals_are_one_line_each(tmp_path, capsys):
    run = _run_dir(tmp_path, TINY_QWEN)
    out = str(tmp_path / "out")
    cases = [
        (["--iteration", "20"], "--iteration='20': is not a complete checkpoint", "pick one of [10]"),
        (["--quant", "nvfp4", "--calib-data", "x"], "--quant='nvfp4': NVFP4 quantization runs modelopt's CUDA",
         "--quant fp8"),
        (["--quant", "fp8"], "--calib-data=None: --quant fp8 calibrates", "moe-prepare-data"),
        (["--quant", "fp8", "--calib-data", str(tmp_path / "nothing")], "--calib-data=", "does not exist"),
        (["--calib-data", "x"], "--calib-data='x': calibrates a quantization, and --quant is not set", "--quant fp8"),
        (["model.num_layers=3"], "--num-layers='3': the run's argv", "conf/ changed since the run"),
    ]
    for extra, what, fix in cases:
        assert convert.main(["export", "--ckpt", str(run), "--out", out, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0] and fix in err[0], (extra, err)


def test_megatron_fsdp_checkpoints_are_refused(tmp_path, capsys):
    run = _run_dir(tmp_path, TINY_QWEN)
    record = json.loads((run / "plan.json").read_text())
    (run / "plan.json").write_text(json.dumps({**record, "argv": [*record["argv"], "--use-megatron-fsdp"]}))
    assert convert.main(["export", "--ckpt", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "fsdp_dtensor format" in capsys.readouterr().err


def test_export_finds_the_newest_complete_checkpoint_and_plan(tmp_path):
    run = _run_dir(tmp_path, TINY_QWEN)
    path, record = convert_io.find_plan(run / "checkpoints", None)  # --ckpt may be the checkpoints directory
    assert path == run / "plan.json"
    ckpt = convert_io.checkpoint_dir(run, record)
    assert ckpt == run / "checkpoints" and convert_io.pick_iteration(ckpt, None) == 10


def test_compare_refusals_are_one_line_each(tmp_path, capsys):
    run = _run_dir(tmp_path, TINY_QWEN)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text("{}")
    cases = [
        (["--hf", str(tmp_path / "nothing"), "--data", "x"], "has no config.json"),
        (["--hf", str(tmp_path / "a"), "--data", str(tmp_path / "missing")], "--data="),
    ]
    for extra, what in cases:
        assert convert.main(["compare", "--ckpt", str(run), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], (extra, err)
    with pytest.raises(ConfigError, match="names 1 files for 2 --hf directories"):
        convert_io.prepare_compare({"--ckpt": str(run), "--hf": f"{tmp_path / 'a'},{tmp_path / 'b'}",
                                    "--data": str(_indexed(tmp_path)), "--json": "one.json"}, [])


def _indexed(tmp_path: Path) -> Path:
    """A valid Megatron .bin/.idx pair (launcher/records/indexed.py reads its header)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path / "tokens"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    builder.add_document(torch.arange(10, dtype=torch.int32), [10])
    builder.finalize(f"{prefix}.idx")
    return prefix


def test_a_smaller_tokenizer_imports_the_embeddings_first_rows(tmp_path):
    """Qwen's case: its tokenizer (151,669 tokens) is smaller than its embedding (151,936 rows); Megatron builds the
    tokenizer's padded size and the import takes those rows (recipes/convert.py), saying so."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["moe convert rows " * 50], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    size = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json")).get_vocab_size()
    cfg = make_cfg([*TINY_QWEN, "data.tokenizer_type=HuggingFaceTokenizer", f"data.tokenizer_model={tmp_path / 'tok'}"])
    rows = -(-size // 128) * 128
    assert rows < 512 and convert_io.check_vocab(cfg, 512) == rows == convert_io.embedding_rows(cfg)
    assert convert_io.embedding_rows(cfg, tp=2) == -(-size // 256) * 256

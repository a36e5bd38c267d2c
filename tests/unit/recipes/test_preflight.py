"""The doctor's compute-side checks (recipes/preflight.py), each with its condition set at the import or
version boundary: a `deep_ep` package written to tmp_path whose methods lack an argument, NVSHMEM
distributions and headers of different versions, a CUDA_HOME without nvcc, a cache directory that cannot
be created. The GPU-facing probes (peer access, compute capability) are the arguments torch would answer."""
from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from fake_deep_ep import GOOD_INIT, NO_NON_BLOCKING, UTILS, write_deep_ep
from recipes import preflight

REPO = Path(__file__).resolve().parents[3]

@pytest.fixture
def deep_ep_on_path(tmp_path, monkeypatch):
    """Put a deep_ep written by the test first on sys.path, and forget any deep_ep imported before."""
    def install(init: str = GOOD_INIT, utils: str = UTILS) -> Path:
        root = write_deep_ep(tmp_path / "site", init, utils)
        monkeypatch.syspath_prepend(str(root))
        for name in [m for m in sys.modules if m == "deep_ep" or m.startswith("deep_ep.")]:
            monkeypatch.delitem(sys.modules, name)
        return root
    yield install
    for name in [m for m in sys.modules if m == "deep_ep" or m.startswith("deep_ep.")]:
        del sys.modules[name]


def test_a_matching_deep_ep_passes_for_both_backends(deep_ep_on_path):
    deep_ep_on_path()
    assert preflight.check_deep_ep_api("deepep") == []
    assert preflight.check_deep_ep_api("hybridep") == []


def test_hybridep_without_non_blocking_is_refused(deep_ep_on_path):
    """HybridEP 3f601f7 (the old container pin): dispatch_with_permute has no non_blocking."""
    deep_ep_on_path(NO_NON_BLOCKING)
    problems = preflight.check_deep_ep_api("hybridep")
    assert len(problems) == 1 and "\n" not in problems[0]
    assert "dispatch_with_permute" in problems[0] and "non_blocking" in problems[0]
    assert "17cfb817bccec3a9c247013360cc550c2bac441e" in problems[0] and "Fix:" in problems[0]
    assert preflight.check_deep_ep_api("deepep") == []  # Buffer is fine: only the hybridep run is refused


def test_deepep_buffer_missing_an_argument_and_a_class(deep_ep_on_path):
    # the first allocate_on_comm_stream is get_dispatch_layout's: misspell it (a renamed argument)
    broken = GOOD_INIT.replace("allocate_on_comm_stream=False)", "allocate_on_stream=False)", 1)
    assert broken.index("allocate_on_stream") > broken.index("def get_dispatch_layout")
    deep_ep_on_path(broken.replace("class HybridEPBuffer", "class _Other"))
    deepep = preflight.check_deep_ep_api("deepep")
    assert len(deepep) == 1 and "get_dispatch_layout" in deepep[0] and "allocate_on_comm_stream" in deepep[0]
    hybridep = preflight.check_deep_ep_api("hybridep")
    assert len(hybridep) == 1 and "deep_ep has no HybridEPBuffer" in hybridep[0]


def test_v2_generation_without_event_overlap_and_a_missing_package(deep_ep_on_path, tmp_path):
    deep_ep_on_path(utils="class EventHandle:\n    pass\n")
    (problem,) = preflight.check_deep_ep_api("deepep")
    assert "EventOverlap" in problem and "Fix:" in problem
    sys.modules.pop("deep_ep", None)
    sys.modules.pop("deep_ep.utils", None)
    (tmp_path / "site" / "deep_ep" / "__init__.py").write_text("raise ImportError('libnvshmem_host.so.3: cannot "
                                                                "open shared object file')\n")
    (problem,) = preflight.check_deep_ep_api("hybridep")
    assert "does not import" in problem and "libnvshmem_host" in problem


def test_api_command_as_the_image_build_runs_it(tmp_path):
    """`python -m recipes.preflight --api deepep hybridep` ends each container build (container/Dockerfile*)."""
    good = write_deep_ep(tmp_path / "good")
    bad = write_deep_ep(tmp_path / "bad", NO_NON_BLOCKING)

    def api(root: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
        return subprocess.run([sys.executable, "-m", "recipes.preflight", "--api", "deepep", "hybridep"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    ok, fail = api(good), api(bad)
    assert ok.returncode == 0 and "deep_ep API matches" in ok.stdout, ok.stderr
    assert fail.returncode == 3 and fail.stderr.count("\n") == 1 and "non_blocking" in fail.stderr


def test_fused_permute_without_fuse_permute_dispatch_is_refused_not_silently_unfused(deep_ep_on_path):
    """megatron-core warns and runs unfused when HybridEP lacks fuse_permute_dispatch; the doctor refuses."""
    deep_ep_on_path(GOOD_INIT.replace(", fuse_permute_dispatch=False", ""))
    assert preflight.check_deep_ep_api("hybridep") == []  # every argument megatron always passes is there
    assert preflight.check_hybridep_fusion(False) == []
    (problem,) = preflight.check_hybridep_fusion(True)
    assert "fuse_permute_dispatch" in problem and "unfused" in problem and "Fix:" in problem


def test_fused_permute_with_a_deep_ep_that_has_it(deep_ep_on_path):
    deep_ep_on_path()
    assert preflight.check_hybridep_fusion(True) == []


def test_nvlink_pairs_that_cannot_reach_each_other():
    nvlinked = {(0, 1), (1, 0)}
    assert preflight.check_nvlink("deepep", [0, 1], lambda a, b: (a, b) in nvlinked) == []
    (problem,) = preflight.check_nvlink("hybridep", [0, 1, 2], lambda a, b: (a, b) in nvlinked)
    assert "0<->2" in problem and "1<->2" in problem and "0<->1" not in problem and "dispatcher=alltoall" in problem


def _nvshmem_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _nvshmem_home(root: Path, version: str) -> Path:
    inc = root / "include" / "non_abi"
    inc.mkdir(parents=True)
    major, minor, patch = version.split(".")
    (inc / "nvshmem_version.h").write_text(f"#define NVSHMEM_VENDOR_MAJOR_VERSION {major}\n"
                                           f"#define NVSHMEM_VENDOR_MINOR_VERSION {minor}\n"
                                           f"#define NVSHMEM_VENDOR_PATCH_VERSION {patch}\n")
    return root


def test_nvshmem_versions_must_agree(tmp_path, monkeypatch):
    _nvshmem_dist(tmp_path / "site", "nvidia-nvshmem-cu13", "3.4.5")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    same = _nvshmem_home(tmp_path / "same", "3.4.5")
    other = _nvshmem_home(tmp_path / "other", "3.3.9")
    assert preflight.nvshmem_versions({})["pip nvidia-nvshmem-cu13"] == "3.4.5"
    assert preflight.check_nvshmem("deepep", {"NVSHMEM_HOME": str(same)}) == []
    (problem,) = preflight.check_nvshmem("deepep", {"NVSHMEM_HOME": str(other)})
    assert "3.4.5" in problem and "3.3.9" in problem and "hang" in problem and "Fix:" in problem


def test_nvshmem_is_checked_only_where_deepep_uses_it(tmp_path, monkeypatch, deep_ep_on_path):
    deep_ep_on_path()
    _nvshmem_dist(tmp_path / "nv", "nvidia-nvshmem-cu13", "3.4.5")
    monkeypatch.syspath_prepend(str(tmp_path / "nv"))
    env = {"NVSHMEM_HOME": str(_nvshmem_home(tmp_path / "other", "3.3.9"))}
    one_node = preflight.Need("deepep", None, 8, 8, 1)
    two_nodes = preflight.Need("deepep", None, 16, 8, 2)
    assert preflight.diagnose(one_node, env, lambda a, b: True, (9, 0)) == []
    (problem,) = preflight.diagnose(two_nodes, env, lambda a, b: True, (9, 0))
    assert "NVSHMEM versions disagree" in problem


def test_hybridep_jit_needs_nvcc_and_a_writable_cache(tmp_path):
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    (missing,) = preflight.check_hybridep_jit({"CUDA_HOME": str(cuda), "HOME": str(home)})
    assert "nvcc" in missing and "CUDA_HOME" in missing
    nvcc = cuda / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert preflight.check_hybridep_jit({"CUDA_HOME": str(cuda), "HOME": str(home)}) == []
    # a cache directory that can only be created inside a plain file: never creatable, even as root
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    (cache,) = preflight.check_hybridep_jit({"CUDA_HOME": str(cuda), "HOME": str(home),
                                             "HYBRID_EP_CACHE_DIR": str(blocker / "cache")})
    assert "HYBRID_EP_CACHE_DIR" in cache and "not writable" in cache
    assert preflight.check_hybridep_jit({"CUDA_HOME": str(cuda), "HYBRID_EP_CACHE_DIR": str(tmp_path / "new/dir")}) \
        == []  # a directory HybridEP can create is fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_hybridep_cache_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    (problem,) = preflight.check_hybridep_jit({"CUDA_HOME": "/nonexistent", "HOME": str(ro)})[1:]
    assert "HOME" in problem


def test_hybridep_nvlink_domain_must_divide_the_ep_group():
    assert preflight.check_hybridep_domain(8, {}) == []
    assert preflight.check_hybridep_domain(8, {"NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN": "4"}) == []
    (problem,) = preflight.check_hybridep_domain(8, {"NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN": "72"})
    assert "=72" in problem and "EP group size 8" in problem
    assert preflight.check_hybridep_domain(8, {"NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN": "x"})


def test_gpu_architecture_against_dispatcher_and_precision():
    assert preflight.check_arch("deepep", "blockwise", (9, 0)) == []
    assert preflight.check_arch("hybridep", "mxfp8", (10, 0)) == []
    (old,) = preflight.check_arch("deepep", None, (8, 0))
    assert "sm_80" in old and "sm_90" in old
    (mx,) = preflight.check_arch(None, "mxfp8", (9, 0))
    assert "precision=mxfp8" in mx and "sm_100" in mx
    assert preflight.check_arch("deepep", "mxfp8", None) == []  # no GPU here: nothing to compare


def test_ncclep_goes_through_the_backends_check():
    """TE's NCCL EP is checked by recipes/backends.check_ncclep (one place); without TE it says so."""
    problems = preflight.diagnose(preflight.Need("ncclep", None, 2, 2, 1), {}, capability=None)
    assert len(problems) == 1 and "transformer_engine.pytorch.ep" in problems[0]


def test_need_from_megatron_args(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    args = Namespace(moe_token_dispatcher_type="flex", moe_flex_dispatcher_backend="hybridep",
                     expert_tensor_parallel_size=1, tensor_model_parallel_size=2, expert_model_parallel_size=16,
                     world_size=32, fp8="e4m3", fp8_recipe="mxfp8", moe_permute_fusion_into_hybridep=False,
                     moe_hybridep_num_blocks_permute=32)
    assert preflight.need_from_args(args) == preflight.Need("hybridep", "mxfp8", 16, 8, 2, True)
    args.moe_token_dispatcher_type, args.fp8 = "alltoall", None
    assert preflight.need_from_args(args) == preflight.Need(None, None, 16, 8, 2)

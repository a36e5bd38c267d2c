# Shared by the perf_results/gpu_host_*.sh scripts (sourced, after /root/gpu-host.env).
# record_summary RUN_DIR: one line from the run's record: status, steady-state medians, peak memory, failure.
record_summary() {
  python3 - "$1/record.json" <<'PY' 2>&1 | tail -1
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("steady_state") or {}
print(" ", r["status"], {k: s[k]["median"] for k in ("tokens_per_s_per_gpu", "tflops_per_gpu", "step_time_ms") if k in s},
      "peak MiB", (r.get("memory") or {}).get("max_allocated_mb"), ((r.get("failure") or {}).get("summary") or "")[:200])
PY
}

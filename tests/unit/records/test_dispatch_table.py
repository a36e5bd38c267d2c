"""The dispatcher tables (launcher/records/dispatch_table.py) from records shaped like the committed issue 16 runs:
grouping, the alltoall baseline per routing, knobs from the argv, failed runs kept, runs of another stack apart."""
import copy
import json
from pathlib import Path

from launcher.records.dispatch_table import dispatcher_tables, group_key, knobs

RUN = Path(__file__).resolve().parents[3] / "perf_results" / "runs" / "issue16_deepep_dropless" / "record.json"


def _record(name: str, dispatcher: str, routing: str, tflops: float, argv_extra=(), status="ok") -> dict:
    r = copy.deepcopy(json.loads(RUN.read_text()))
    r.update(name=name, dispatcher=dispatcher, routing=routing, status=status)
    r["argv"] = [a for a in r["argv"] if a != "--moe-flex-dispatcher-num-sms"] + list(argv_extra)
    r["steady_state"]["tflops_per_gpu"]["median"] = tflops
    if status != "ok":
        r["failure"] = {"summary": "out of GPU memory in iteration 2"}
    return r


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split("](")[0].lstrip("| ["): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| [")}


def test_one_table_each_row_against_alltoall_of_its_routing():
    recs = [_record("a_drop", "alltoall", "dropless", 300.0), _record("h_drop", "hybridep", "dropless", 330.0),
            _record("a_fb", "alltoall", "forced_balance", 320.0), _record("d_fb", "deepep", "forced_balance", 288.0),
            _record("d_fb_t", "deepep", "forced_balance", 0.0, ["--moe-flex-dispatcher-num-sms", "32"], "failed")]
    text = dispatcher_tables(recs, [f"runs/{r['name']}/record.md" for r in recs])
    assert text.count("| run |") == 1
    rows = _rows(text)
    assert rows["h_drop"][-1] == "1.100x" and rows["a_drop"][-1] == "1.000x"
    assert rows["d_fb"][-1] == "0.900x"  # against the forced-balance alltoall, not the dropless one
    assert rows["d_fb_t"][3] == "num-sms 32"
    assert rows["d_fb_t"][5].startswith("failed: out of GPU memory")
    assert list(rows) == ["a_drop", "h_drop", "a_fb", "d_fb", "d_fb_t"]  # routing, then dispatcher


def test_runs_of_another_code_commit_or_layout_are_not_compared():
    a, d = _record("a", "alltoall", "dropless", 300.0), _record("d", "deepep", "dropless", 290.0)
    other = copy.deepcopy(d)
    other["code"]["commit"] = "0" * 40
    assert group_key(a) != group_key(other)
    # the deepep run is shown in a table of its own, against nothing; the alltoall run alone is no table
    text = dispatcher_tables([a, other], ["runs/a/record.md", "runs/d/record.md"])
    assert text.count("| run |") == 1 and list(_rows(text)) == ["d"] and _rows(text)["d"][-1] == "-"
    bigger = copy.deepcopy(d)
    bigger["batch"]["micro_batch_size"] = 8
    assert _rows(dispatcher_tables([a, bigger], ["runs/a/record.md", "runs/d/record.md"]))["d"][-1] == "-"
    assert _rows(dispatcher_tables([a, d], ["runs/a/record.md", "runs/d/record.md"]))["d"][-1] == "0.967x"
    assert "no run" in dispatcher_tables([a], ["runs/a/record.md"])


def test_knobs_read_from_the_argv():
    r = {"argv": ["--moe-flex-dispatcher-num-sms", "24", "--moe-permute-fusion-into-hybridep",
                  "--moe-hybridep-num-blocks-permute", "64", "--lr", "1e-4"]}
    assert knobs(r) == "num-sms 24, permute-fusion-into-hybridep, hybridep-num-blocks-permute 64"
    assert knobs({"argv": ["--lr", "1e-4"]}) == "-"

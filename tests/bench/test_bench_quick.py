"""The benchmark runner's --quick smoke run: results are produced (never a speed check)."""

import json

from crs_fast.benchmarks.cases import case_ops
from crs_fast.benchmarks.run import main

# The published functions each op is compared with (issue: every anchor that exists installed).
ANCHORS = {
    "gae": {"verl", "openrlhf"},
    "kl_penalty": {"verl", "openrlhf"},
    "ppo_policy_loss": {"verl", "openrlhf"},
    "ppo_value_loss": {"verl", "openrlhf"},
    "token_logprobs": {"verl", "trl", "openrlhf"},
    "linear_logprobs": {"verl"},
}


def test_quick_run_writes_results(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--name", "smoke"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    stem = [f for f in files if f.endswith(".json")][0][:-5]
    assert {f"{stem}.json", f"{stem}.md", f"{stem}-speedup.png", f"{stem}-memory.png"} <= set(files)
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["crs_fast_backend"] == "cpu" and result["limits"]["copy_bytes_per_s"] > 0
    rows = [r for r in result["rows"] if "median_ms" in r]
    for op in case_ops():
        providers = {r["provider"] for r in rows if r["op"] == op}
        assert "crs_fast" in providers and "reference" in providers, op
        listed = providers | {r["provider"] for r in result["rows"] if r["op"] == op and "unavailable" in r}
        assert op == "ppo_step" or len(listed) >= 3, (op, listed)
        assert ANCHORS.get(op, set()) <= providers, (op, providers)
        mine = [r for r in rows if r["op"] == op and r["provider"] == "crs_fast"]
        assert all(r["median_ms"] > 0 and "speedup_vs" in r for r in mine)
    assert any(r.get("peak_extra_mib") is not None for r in rows)  # the memory path ran
    assert "| op | shape | provider |" in (tmp_path / f"{stem}.md").read_text()

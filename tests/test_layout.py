"""Paths that modules build from their own location still name the repo's files after the
package's folders move (issue 19's layout): bench appends to benchmarks/results.jsonl."""

from pathlib import Path

from budgetlm.plan import bench

REPO = Path(__file__).resolve().parents[1]


def test_bench_records_into_the_repos_results_file():
    assert bench.RESULTS == REPO / "benchmarks" / "results.jsonl"
    assert bench.RESULTS.is_file()

"""The README's config reference is the one generated from configs/base.py (no stale keys), and
the fault table of docs/faults.md names tests that exist, and a benchmark rewrites only its
own section of docs/benchmarks.md."""

import pathlib
import re
import runpy

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
  reference = runpy.run_path(str(REPO / "launch" / "config_reference.py"))
  table = reference["table"]()
  assert table in (REPO / "README.md").read_text(), (
      "README.md's config reference is stale: paste the output of `python launch/config_reference.py`")
  keys = [row[0] for row in reference["rows"]()]
  assert len(keys) == len(set(keys)) > 80


def test_every_test_the_fault_table_names_exists():
  table = (REPO / "docs" / "faults.md").read_text()
  named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", table)
  assert len(named) >= 30
  for path, name in named:
    assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"docs/faults.md names {path}::{name}"


def test_a_benchmark_rewrites_only_its_own_section_of_the_benchmarks_doc(tmp_path):
  write = runpy.run_path(str(REPO / "launch" / "shared_machine.py"))["write_doc_section"]
  doc = tmp_path / "benchmarks.md"
  write(doc, "a", "first A\n")
  write(doc, "b", "B\n")
  write(doc, "a", "second A\n")
  assert doc.read_text() == ("# Benchmarks\n\n<!-- a:begin -->\nsecond A\n<!-- a:end -->\n"
                             "<!-- b:begin -->\nB\n<!-- b:end -->\n")

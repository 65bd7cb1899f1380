"""The README's config reference is the one generated from configs/base.py (no stale keys)."""

import pathlib
import runpy

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
  reference = runpy.run_path(str(REPO / "launch" / "config_reference.py"))
  table = reference["table"]()
  assert table in (REPO / "README.md").read_text(), (
      "README.md's config reference is stale: paste the output of `python launch/config_reference.py`")
  keys = [row[0] for row in reference["rows"]()]
  assert len(keys) == len(set(keys)) > 80

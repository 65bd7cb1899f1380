"""Prints the config reference (every key of configs/base.py, its default, its meaning) as the
markdown table that README.md embeds; tests/test_docs.py checks that the two agree."""

import pathlib
import re
import sys

BASE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "base.py"
ASSIGN = re.compile(r"^\s*c\.([\w.]+) = (.+?)(?:\s+#\s*(.*))?$")


def rows() -> list[tuple[str, str, str]]:
  """(key, default, meaning) for every leaf key; comment lines above a key join its meaning."""
  out, pending = [], []
  source = BASE.read_text()
  defaults = source[source.index("def get_config"):source.index("\n  return c\n")]  # not paper_scale's
  for line in defaults.splitlines():
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("# ").strip())
      continue
    match = ASSIGN.match(line)
    if not match:
      pending = []
      continue
    key, value, comment = match.groups()
    if "ConfigDict()" in value:  # a group; its comment is a heading, not a key
      pending = []
      continue
    out.append((key, value.strip(), " ".join(pending + ([comment] if comment else []))))
    pending = []
  return out


def table() -> str:
  lines = ["| key | default | meaning |", "|---|---|---|"]
  for key, value, meaning in rows():
    lines.append(f"| `{key}` | `{value}` | {meaning.replace('|', '/').replace('<', '&lt;')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.stdout.write(table() + "\n")

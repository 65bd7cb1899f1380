"""Timed rounds on a shared machine, for the benchmark scripts.

Before a round, wait (up to a budget) until other processes leave the CPUs; after it, re-run
the round if they used them meanwhile. Other work is judged by the CPU time it takes, from
/proc/stat, not by process names: two benchmarks that wait for each other by name would
deadlock.
"""

import os
import pathlib
import time


def proc_stat_cpu() -> list[int]:
  """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal,
  ...) in clock ticks, from the first line of /proc/stat."""
  return [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def steal_s() -> float:
  """CPU seconds the hypervisor gave to other machines (all CPUs, since boot; 0 on bare metal)."""
  fields = proc_stat_cpu()
  return fields[7] / os.sysconf("SC_CLK_TCK") if len(fields) > 7 else 0.0


class Quiet:
  """Waits before a timed round until other processes use at most `max_cores` on average, and
  counts what it waited for and which rounds it threw away."""

  def __init__(self, max_wait: float, max_cores: float = 0.25):
    self.max_wait, self.max_cores = max_wait, max_cores
    self.waited_s = 0.0  # total time spent waiting
    self.discarded = 0  # timed rounds thrown away because other work ran meanwhile
    self.kept_disturbed = 0  # disturbed rounds kept once the re-runs were used up
    self.gave_up = False

  @staticmethod
  def mark() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process and its children)."""
    fields = proc_stat_cpu()
    idle = fields[3] + fields[4]  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guest is inside user
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system

  @staticmethod
  def others_cores(since) -> float:
    """Average cores used by other processes since `since` (a `mark()`)."""
    (w0, b0, o0), (w1, b1, o1) = since, Quiet.mark()
    return max(0.0, (b1 - b0) - (o1 - o0)) / max(w1 - w0, 1e-9)

  def wait(self, phase: str) -> None:
    began = time.perf_counter()
    while self.max_wait and not self.gave_up:
      start = self.mark()
      time.sleep(3)
      cores = self.others_cores(start)
      if cores <= self.max_cores:
        break
      if self.waited_s + time.perf_counter() - began >= self.max_wait:
        print(f"[{phase}] other processes still use {cores:.2f} cores after {self.max_wait} s of waiting; "
              "timing anyway", flush=True)
        self.gave_up = True
        break
      print(f"[{phase}] waiting: other processes use {cores:.2f} cores", flush=True)
      time.sleep(12)
    if self.max_wait:  # the last 3-second look found the machine quiet: not counted as waiting
      self.waited_s += max(0.0, time.perf_counter() - began - 3)

  def summary(self) -> str:
    if not self.max_wait:
      return "no waiting for a quiet machine (--quiet_wait=0)"
    text = (f"waited {self.waited_s:.0f} s for other processes to leave the CPUs and re-ran "
            f"{self.discarded} disturbed round(s)")
    if self.kept_disturbed:
      text += f"; **kept {self.kept_disturbed} disturbed round(s)** (re-runs used up)"
    return text + (f"; **gave up waiting after {self.max_wait} s: timings are disturbed**" if self.gave_up else "")


def timed_rounds(quiet: Quiet, phase: str, rounds: int, run_round) -> None:
  """Runs `rounds` undisturbed rounds. `run_round(i)` times round i and returns callables that
  record its timings; they are called only if other processes stayed off the CPUs during the
  round (else the round is re-run, at most `rounds` extra times in all)."""
  done, retries = 0, 0
  while done < rounds:
    quiet.wait(phase)
    start = quiet.mark()
    timings = run_round(done)
    cores = quiet.others_cores(start)
    if quiet.max_wait and not quiet.gave_up and cores > quiet.max_cores:
      if retries < rounds:
        quiet.discarded += 1
        retries += 1
        print(f"[{phase}] round {done} disturbed (other processes used {cores:.2f} cores); re-running it",
              flush=True)
        continue
      quiet.kept_disturbed += 1
      print(f"[{phase}] round {done} disturbed; no re-runs left, keeping it", flush=True)
    for keep in timings:
      keep()
    done += 1


def write_doc_section(path: str | pathlib.Path, name: str, text: str) -> None:
  """Replaces the section of `path` (relative: to the repository root) marked
  `<!-- name:begin -->` ... `<!-- name:end -->` with `text`, or appends it; the other
  benchmarks' sections are untouched."""
  path = pathlib.Path(path)
  if not path.is_absolute():
    path = pathlib.Path(__file__).resolve().parents[1] / path
  begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
  section = f"{begin}\n{text}{end}\n"
  old = path.read_text() if path.exists() else "# Benchmarks\n"
  if begin in old and end in old:
    new = old[:old.index(begin)] + section + old[old.index(end) + len(end):].lstrip("\n")
  else:
    new = old.rstrip("\n") + "\n\n" + section
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(new)

"""Training checkpoints: a thin wrapper over Orbax's CheckpointManager.

Saves the train state (any pytree of arrays) plus a JSON dict (data position, run config,
metrics) every N steps, asynchronously, keeping the last K; refuses to save non-finite
state; restores straight into target shardings, falling back from a damaged latest checkpoint
to the newest readable one; reports a save as saved only once Orbax has finalized it, and a
failed save as an error naming the step, the path and the OS error; and turns SIGTERM into a
flag the loop polls.

Typical loop::

  watcher = checkpoint.install_sigterm_handler()
  ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(f"{workdir}/checkpoints"))
  restored = ckpt.restore_newest_readable(abstract_state)  # None on a fresh run
  for step in range(start, total):
    state, metrics = train_step(state, batch, rng)
    ckpt.save(step + 1, state, {"data": it.state()}, metrics=metrics)
    ckpt.poll()  # raises CheckpointSaveError once a background save has failed
    if watcher.preemption_requested(step + 1):
      ckpt.save(step + 1, state, {"data": it.state()}, metrics=metrics, force=True)
      ckpt.wait()  # only now is the step on disk
      break
  ckpt.close()
  watcher.uninstall()

Every process must make the same calls with the same arguments: Orbax coordinates the
hosts (barriers, process-0-only metadata and JSON writes) itself.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import threading
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cc_jax import errors

PyTree = Any

# Item names inside each step directory: <step>/state (arrays), <step>/extra (JSON).
_STATE = "state"
_EXTRA = "extra"
# Unreadable checkpoints are moved from <directory>/<step> to <directory>.damaged/<step>.
DAMAGED_SUFFIX = ".damaged"


class NonFiniteCheckpointError(ValueError):
  """Raised instead of saving a checkpoint that holds (or was reached through) NaN/Inf."""


class CheckpointSaveError(errors.RunStopped):
  """A save did not complete (disk full, permission, ...); the previous checkpoints are intact."""


class DamagedCheckpointError(errors.RunStopped):
  """A checkpoint on disk cannot be read back."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where and how often to checkpoint.

  Attributes:
    directory: root holding one sub-directory per step (usually `<workdir>/checkpoints`).
      Local paths are made absolute; `gs://...` and other URLs pass through.
    save_every_steps: save when `step % save_every_steps == 0` (or `force=True`).
    keep_last: number of most recent complete checkpoints kept on disk (>= 1).
    async_save: write in a background thread; `save` returns once arrays are on the host.
    check_finite_state: before saving, reduce every float leaf of the state with
      `isfinite` on device and refuse to save if any is NaN/Inf (one pass over the
      state per save; the metrics check alone lags the state by one update).
  """

  directory: str
  save_every_steps: int = 1000
  keep_last: int = 3
  async_save: bool = True
  check_finite_state: bool = True


def _non_finite_metric(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
  """Returns (name, value) of the first numeric scalar metric that is NaN/Inf, else None."""
  for name, value in metrics.items():
    # Non-numeric entries (strings, lists) are metadata, not health signals.
    if isinstance(value, (str, bytes)) or value is None:
      continue
    arr = np.asarray(value)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
      continue
    v = float(arr.reshape(()))
    if not math.isfinite(v):
      return name, v
  return None


@jax.jit
def _leaves_finite(leaves: list[jax.Array]) -> list[jax.Array]:
  return [jnp.isfinite(x).all() for x in leaves]


def _non_finite_leaves(state: PyTree) -> list[str]:
  """Returns the key paths of the floating-point leaves of `state` holding NaN/Inf."""
  paths, device_leaves = [], []
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      continue
    if isinstance(leaf, jax.Array):
      paths.append(path)
      device_leaves.append(leaf)
    elif not np.isfinite(np.asarray(leaf)).all():
      bad.append(jax.tree_util.keystr(path))
  if device_leaves:
    # One jitted reduction over the (possibly sharded, multi-host) arrays; only the
    # per-leaf booleans, which come out replicated, travel to the host.
    flags = jax.device_get(_leaves_finite(device_leaves))
    bad += [jax.tree_util.keystr(p) for p, ok in zip(paths, flags) if not ok]
  return bad


# Orbax's messages for a restore target that does not match the files: not damage.
_STRUCTURE_ERRORS = ("not compatible with the stored shape", "tree structures do not match")


def _is_structure_error(error: BaseException) -> bool:
  return any(text in str(error) for text in _STRUCTURE_ERRORS)


def _first_line(error: BaseException) -> str:
  """The root cause's first line, without TensorStore's spec dump (Orbax wraps a read error,
  e.g. 'OUT_OF_RANGE: Error reading "w/0.0" ...', in a message of several kilobytes)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return text.split(" [tensorstore_spec")[0][:400]


def _to_json_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """Converts device/numpy scalars to Python numbers so they can go into step metadata."""
  out = {}
  for name, value in metrics.items():
    arr = np.asarray(value)
    out[name] = arr.item() if arr.size == 1 and np.issubdtype(arr.dtype, np.number) else value
  return out


class Checkpointer:
  """Saves and restores `(state, extra)` pairs through one `ocp.CheckpointManager`.

  Each step directory holds `state` (an Orbax `StandardSave` pytree: OCDBT/Zarr arrays,
  dtypes including bfloat16 preserved) and `extra` (an Orbax `JsonSave` dict, written by
  the primary process only). Orbax writes into `<step>.orbax-checkpoint-tmp` and renames
  when every item is committed, so only finalized steps are ever listed or restored;
  stale tmp dirs from a crashed run are deleted when the Checkpointer is created.
  Old steps are deleted only after the newer save has finalized, so a save that
  fails halfway never costs the previous checkpoint.
  """

  def __init__(self, config: CheckpointConfig):
    if config.save_every_steps < 1:
      raise ValueError(f"save_every_steps must be >= 1, got {config.save_every_steps}.")
    if config.keep_last < 1:
      raise ValueError(f"keep_last must be >= 1, got {config.keep_last}.")
    self.config = config
    directory = config.directory
    # Orbax wants absolute paths; leave URLs (gs://...) alone.
    if "://" not in directory:
      directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        # Explicit policy: Orbax's default also saves the very first step it is asked
        # about (InitialSavePolicy), which would break "every N steps".
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(config.save_every_steps),
            # Multi-host: saves at the step all hosts agreed on after a preemption notice.
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=ocp.checkpoint_managers.LatestN(config.keep_last),
        enable_async_checkpointing=config.async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(directory, options=options)
    self._in_flight: int | None = None  # step of an async save not yet known to be complete

  @property
  def manager(self) -> ocp.CheckpointManager:
    """The underlying Orbax manager (e.g. `manager.metadata(step).custom_metadata`)."""
    return self._manager

  @property
  def directory(self) -> str:
    return str(self._manager.directory)

  def all_steps(self) -> list[int]:
    """Steps of the checkpoints on disk (an in-flight async save is included)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Latest checkpointed step, or None if there is none.

    Includes an async save still in flight; `wait()` (or `restore`) makes it complete.
    """
    return self._manager.latest_step()

  def save(
      self,
      step: int,
      state: PyTree,
      extra: Mapping[str, Any] | None = None,
      *,
      metrics: Mapping[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Saves `state` and `extra` as checkpoint `step` if the schedule (or `force`) says so.

    Cheap on steps that are not saved: nothing is read from the device, so the loop can
    call it every step without stalling its async dispatch.

    Args:
      step: training step the state corresponds to.
      state: pytree of `jax.Array` (any sharding) / numpy arrays / Python scalars, e.g.
        params, optax state, step counter, raw uint32 PRNG key data. Arrays are copied
        to the host before this returns, so the caller may donate them afterwards.
      extra: JSON-serializable dict (data-iterator state, config JSON, ...). Round-trips
        through JSON: tuples come back as lists, non-string keys as strings.
      metrics: scalar metrics (loss, grad norm, ...) of the step that produced `state`,
        as Python/numpy/replicated device scalars. Any NaN/Inf among them refuses the
        save; the values are stored in the step's Orbax metadata (`custom_metadata`).
      force: save even if `step` is not a multiple of `save_every_steps` (end of
        training, preemption).

    Returns:
      True if a save was started; False if skipped by the schedule or because `step`
      is already checkpointed (so a final forced save is idempotent).

    Raises:
      NonFiniteCheckpointError: a metric or (with `check_finite_state`) a state leaf is
        NaN/Inf. Nothing is written and existing checkpoints are untouched.
      TypeError: `extra` is not JSON-serializable.
    """
    extra = dict(extra or {})
    self.wait()  # an earlier save that failed stops the run here, not after this one is "saved"
    if step in self._manager.all_steps():
      logging.info("Checkpoint for step %d already exists; not saving again.", step)
      return False
    if not force and not self._manager.should_save(step):
      return False
    if metrics is not None and (bad := _non_finite_metric(metrics)) is not None:
      raise NonFiniteCheckpointError(
          f"Refusing to save checkpoint at step {step}: metric {bad[0]!r} is {bad[1]}. "
          f"Latest good checkpoint is step {self.latest_step()}.")
    if self.config.check_finite_state and (bad_leaves := _non_finite_leaves(state)):
      raise NonFiniteCheckpointError(
          f"Refusing to save checkpoint at step {step}: non-finite values in state "
          f"leaves {bad_leaves[:5]}{' ...' if len(bad_leaves) > 5 else ''}. "
          f"Latest good checkpoint is step {self.latest_step()}.")
    # Orbax serializes JSON in its background thread; fail here, in the caller's frame.
    json.dumps(extra)
    custom_metadata = {"metrics": _to_json_scalars(metrics)} if metrics else None
    # The schedule was checked above (once, since in multi-host runs it includes a
    # preemption sync point), so Orbax is told to save unconditionally.
    self._in_flight = step
    try:
      started = self._manager.save(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardSave(state),
              _EXTRA: ocp.args.JsonSave(extra),
          }),
          custom_metadata=custom_metadata,
          force=True,
      )
    except Exception as error:  # the synchronous part (directories, host copies) failed
      self._raise_save_error(error)
    if not self.config.async_save:
      self.wait()
    return started

  def poll(self) -> int | None:
    """Returns the step of an async save that has just completed (once), else None.

    Cheap enough for every train step: it asks only whether Orbax's background thread is
    still running. Raises `CheckpointSaveError` if that save failed.
    """
    if self._in_flight is None or self._manager.is_saving_in_progress():
      return None
    return self.wait()

  def _raise_save_error(self, error: Exception):
    step, self._in_flight = self._in_flight, None
    # Orbax forgets every step it knew after a failed save; the directory still has them.
    self._manager.reload()
    latest = self._manager.latest_step()
    raise CheckpointSaveError(
        f"checkpoint step {step} was NOT saved to {self.directory}: {error}\n"
        f"The latest complete checkpoint is {f'step {latest}' if latest is not None else 'none'} "
        f"({self.directory}), intact; free space or fix the cause, then rerun the same command to "
        "resume from it.") from error

  def restore(
      self, abstract_state: PyTree, step: int | None = None
  ) -> tuple[PyTree, dict[str, Any]] | None:
    """Restores checkpoint `step` (default: the latest complete one).

    Args:
      abstract_state: pytree with the structure of the saved state whose array leaves
        are `jax.ShapeDtypeStruct`s with `.sharding` set (e.g. from `jax.eval_shape`
        plus the target shardings). Arrays are read straight into those shardings,
        which may use a different mesh than the one the checkpoint was saved from.
      step: step to restore; None means the latest.

    Returns:
      `(state, extra)`, or None when `step` is None and the directory holds no
      complete checkpoint (a fresh run).

    Raises:
      ValueError: an array leaf of `abstract_state` has no sharding (Orbax would
        silently return numpy arrays on the host).
      FileNotFoundError: an explicit `step` that is not on disk.
    """
    # A save still in flight would otherwise be listed but unreadable.
    self._manager.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        return None
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}.")
    missing = [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None
    ]
    if missing:
      raise ValueError(f"abstract_state leaves without a sharding: {missing[:5]}.")
    restored = self._read(step, ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_state),
        _EXTRA: ocp.args.JsonRestore(),
    }))
    return restored[_STATE], restored[_EXTRA]

  def restore_newest_readable(self, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any], int] | None:
    """Restores the latest checkpoint, or, if it cannot be read, the newest one that can.

    Each unreadable checkpoint is named with the reason. Once an older one has been restored
    (so the failure was the files, not `abstract_state`), the unreadable newer ones are moved
    to `<directory>.damaged/` for inspection (never deleted), so that training can save those
    steps again. If none can be read, the latest one's error is raised and nothing is moved.

    Returns:
      `(state, extra, step)`, or None when the directory holds no complete checkpoint.
    """
    self.wait()
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        state, extra = self.restore(abstract_state, step)
      except DamagedCheckpointError as error:
        logging.warning("%s; trying the previous checkpoint", error)
        damaged.append((step, error))
        continue
      if damaged:
        self._set_aside([s for s, _ in damaged])
        logging.warning("restored step %d instead of the damaged latest (step %d); the damaged ones are in %s",
                        step, damaged[0][0], self.directory + DAMAGED_SUFFIX)
      return state, extra, step
    if damaged:
      raise damaged[0][1]
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      aside = self.directory + DAMAGED_SUFFIX
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        while os.path.exists(target):  # an earlier fallback set the same step aside
          target += "+"
        os.rename(os.path.join(self.directory, str(step)), target)
    multihost_utils.sync_global_devices("cc_jax: damaged checkpoints set aside")
    self._manager.reload()

  def _read(self, step: int, args: ocp.args.Composite) -> Any:
    """Orbax's restore, with a failure to read the files named by step and path."""
    try:
      return self._manager.restore(step, args=args)
    except Exception as error:  # Orbax wraps TensorStore's errors in a bare Exception
      if _is_structure_error(error):
        raise
      raise DamagedCheckpointError(
          f"checkpoint step {step} in {self.directory} cannot be read: {_first_line(error)}") from error

  def restore_extra(self, step: int | None = None) -> dict[str, Any]:
    """The `extra` dict of checkpoint `step` (default: the latest), without reading the arrays."""
    self._manager.wait_until_finished()
    step = self._manager.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"No checkpoint{'' if step is None else f' for step {step}'} in {self.directory}.")
    return self._read(step, ocp.args.Composite(**{_EXTRA: ocp.args.JsonRestore()}))[_EXTRA]

  def restore_params(self, abstract_params: PyTree, step: int | None = None) -> tuple[PyTree, int]:
    """Restores only `state.params` (no optimizer state), e.g. for inference.

    Args:
      abstract_params: the params pytree of jax.ShapeDtypeStructs with shardings.
      step: step to restore; None means the latest.

    Returns:
      (params, step).
    """
    self._manager.wait_until_finished()
    step = self._manager.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"No checkpoint{'' if step is None else f' for step {step}'} in {self.directory}; "
                              f"have {self.all_steps()}.")
    item = {"params": abstract_params}
    restored = self._read(step, ocp.args.Composite(**{
        _STATE: ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                       partial_restore=True)}))
    return restored[_STATE]["params"], step

  def wait(self) -> int | None:
    """Blocks until an in-flight async save is finalized; returns its step (None if there was none).

    Raises:
      CheckpointSaveError: that save failed; it names the step, the directory, the OS error
        and the latest complete checkpoint, which the failed save left intact.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as error:
      self._raise_save_error(error)
    done, self._in_flight = self._in_flight, None
    if done is not None:  # the only "saved" line: written once Orbax has renamed the step into place
      logging.info("checkpoint step %d saved in %s", done, self.directory)
    return done

  def close(self) -> None:
    """Waits for pending saves and deletions (raising if a save failed), then releases
    Orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class PreemptionWatcher:
  """Turns SIGTERM (the usual preemption notice) into a flag the train loop polls.

  Single process: a Python SIGTERM handler sets a flag, so the process is not killed
  and the loop can save with `force=True` and exit.

  Multiple processes (`jax.process_count() > 1`): the notice may reach only some hosts,
  and all hosts must agree on the step at which they save. JAX's preemption service
  (on by default after `jax.distributed.initialize`) already catches SIGTERM in C++,
  propagates it through the coordinator and picks a common step; this watcher then
  installs no Python handler (it would replace JAX's) and `preemption_requested(step)`
  asks `multihost_utils.reached_preemption_sync_point(step)`, which every host must
  call at every step. `Checkpointer.save` also saves at that step without `force`,
  through Orbax's `PreemptionCheckpointingPolicy`.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._installed = False
    self._multi_process = jax.process_count() > 1

  def install(self) -> "PreemptionWatcher":
    """Installs the SIGTERM handler (single process only; call from the main thread)."""
    if not self._multi_process and not self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def _on_sigterm(self, signum, frame) -> None:
    del frame
    logging.warning("Received signal %d; will checkpoint and stop at the next step.", signum)
    self._flag.set()

  def preemption_requested(self, step: int | None = None) -> bool:
    """True once the loop should save (with `force=True`) and exit.

    Args:
      step: the current step; required with multiple processes, where every host must
        call this at every step with the same value.
    """
    if not self._multi_process:
      return self._flag.is_set()
    if step is None:
      raise ValueError("preemption_requested needs `step` when running multi-process.")
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:
      raise RuntimeError(
          "JAX preemption service is off; set jax_enable_preemption_service=True "
          "before jax.distributed.initialize().") from e

  def uninstall(self) -> None:
    """Restores the SIGTERM handler that was active before `install`."""
    if self._installed:
      # getsignal() gives None for a handler installed outside Python; SIG_DFL is the
      # closest restorable value.
      previous = signal.SIG_DFL if self._previous is None else self._previous
      signal.signal(signal.SIGTERM, previous)
      self._installed = False


def install_sigterm_handler() -> PreemptionWatcher:
  """Returns an installed `PreemptionWatcher`; call `uninstall()` when the loop ends."""
  return PreemptionWatcher().install()

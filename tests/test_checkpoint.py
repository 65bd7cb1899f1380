"""Tests for cc_jax.checkpoint: round trip, schedule/retention, resharding, guards, SIGTERM."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cc_jax import checkpoint


def _make_state(seed: int = 0):
  """A small but realistic train state: params (incl. bf16), adamw state, step, PRNG key."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {
      "embed_tokens": jax.random.normal(k1, (16, 8), jnp.float32),
      "layers": {
          "q_proj": jax.random.normal(k2, (8, 8), jnp.bfloat16),
          "norm": jnp.ones((8,), jnp.float32),
      },
  }
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jax.random.normal(k3, p.shape, p.dtype), params)
  # One real update so mu/nu/count are not trivially zero.
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return {
      "params": params,
      "opt_state": opt_state,
      "step": jnp.asarray(seed + 1, jnp.int32),
      "rng": jax.random.key_data(jax.random.PRNGKey(seed + 100)),
  }


def _abstract(state, sharding_fn=lambda x: x.sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), state)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _ckpt(tmp_path, **kw):
  kw.setdefault("save_every_steps", 1)
  return checkpoint.Checkpointer(
      checkpoint.CheckpointConfig(str(tmp_path / "checkpoints"), **kw))


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_exact(tmp_path, async_save):
  state = _make_state()
  extra = {"data": {"epoch": 1, "index": 37, "shard": "a"}, "config": json.dumps({"lr": 2e-5}),
           "metrics": {"loss": 1.25}}
  with _ckpt(tmp_path, async_save=async_save) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore(_abstract(state)) is None
    assert ckpt.save(10, state, extra, metrics={"loss": jnp.float32(1.25)})
    ckpt.wait()
    assert ckpt.latest_step() == 10
    restored, restored_extra = ckpt.restore(_abstract(state))
  _assert_trees_equal(restored, state)
  assert restored["params"]["layers"]["q_proj"].dtype == jnp.bfloat16
  assert restored_extra == extra
  # A fresh manager on the same directory sees the same, and the metrics are in metadata.
  with _ckpt(tmp_path) as ckpt:
    assert ckpt.latest_step() == 10
    assert ckpt.manager.metadata(10).custom_metadata["metrics"] == {"loss": 1.25}
    _assert_trees_equal(ckpt.restore(_abstract(state), step=10)[0], state)
    with pytest.raises(FileNotFoundError, match="step 3"):
      ckpt.restore(_abstract(state), step=3)


def test_schedule_and_keep_last(tmp_path):
  state = _make_state()
  with _ckpt(tmp_path, save_every_steps=2, keep_last=2) as ckpt:
    saved = [ckpt.save(s, state, {"s": s}) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.save(7, state, {"s": 7}, force=True)
    # Forcing an already-saved step is a no-op, so a final save can always be forced.
    assert not ckpt.save(7, state, {"s": 7}, force=True)
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7]
    assert ckpt.restore(_abstract(state))[1] == {"s": 7}
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_restore_into_different_sharding(tmp_path):
  devs = np.array(jax.devices())
  n = len(devs)
  save_mesh = Mesh(devs, ("x",))
  w = jnp.arange(2 * n * 4, dtype=jnp.float32).reshape(2 * n, 4)
  state = {
      "w": jax.device_put(w, NamedSharding(save_mesh, P("x", None))),
      "b": jax.device_put(w[0].astype(jnp.bfloat16), NamedSharding(save_mesh, P())),
  }
  if n >= 4 and n % 2 == 0:
    restore_mesh = Mesh(devs.reshape(2, n // 2), ("data", "model"))
    target = {"w": NamedSharding(restore_mesh, P("model", "data")),
              "b": NamedSharding(restore_mesh, P("data"))}
  else:
    restore_mesh = Mesh(devs[::-1], ("y",))
    target = {"w": NamedSharding(restore_mesh, P()), "b": NamedSharding(restore_mesh, P())}
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(1, state, {})
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, target)
    restored, _ = ckpt.restore(abstract)
    for k in state:
      assert restored[k].sharding == target[k]
    _assert_trees_equal(restored, state)
    with pytest.raises(ValueError, match="without a sharding"):
      ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))


def test_non_finite_never_replaces_last_good(tmp_path):
  good = _make_state(0)
  with _ckpt(tmp_path, keep_last=1) as ckpt:
    ckpt.save(2, good, {"i": 2}, metrics={"loss": 0.5})
    with pytest.raises(checkpoint.NonFiniteCheckpointError, match=r"step 4.*'loss' is nan"):
      ckpt.save(4, _make_state(1), {"i": 4}, metrics={"loss": jnp.float32(jnp.nan)})
    with pytest.raises(checkpoint.NonFiniteCheckpointError, match=r"step 5.*'grad_norm' is inf"):
      ckpt.save(5, _make_state(1), {"i": 5}, metrics={"loss": 0.5, "grad_norm": np.inf})
    # Finite metrics but a NaN in the state (the update after the logged loss diverged).
    bad = _make_state(1)
    bad["opt_state"][0].mu["layers"]["q_proj"] = bad["params"]["layers"]["q_proj"].at[0, 0].set(
        jnp.nan)
    with pytest.raises(checkpoint.NonFiniteCheckpointError, match=r"step 6.*q_proj"):
      ckpt.save(6, bad, {"i": 6}, metrics={"loss": 0.5})
    ckpt.wait()
    assert ckpt.all_steps() == [2]
    state, extra = ckpt.restore(_abstract(good))
  _assert_trees_equal(state, good)
  assert extra == {"i": 2}
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_unfinished_checkpoint_is_ignored(tmp_path):
  state2, state4 = _make_state(2), _make_state(4)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(2, state2, {"i": 2})
    ckpt.save(4, state4, {"i": 4})
  root = tmp_path / "checkpoints"
  # A complete write of step 4 that was never committed (killed before the final
  # rename), and a half-created step 6.
  os.rename(root / "4", root / "4.orbax-checkpoint-tmp")
  (root / "6.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  with _ckpt(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    state, extra = ckpt.restore(_abstract(state2))
    _assert_trees_equal(state, state2)
    assert extra == {"i": 2}
    # The stale tmp dirs are cleaned up (before the next save at the latest) and step 4
    # can be saved again.
    assert ckpt.save(4, state4, {"i": 4})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4]
  assert sorted(os.listdir(root)) == ["2", "4"]


def test_sigterm_sets_flag_and_does_not_kill():
  before = signal.getsignal(signal.SIGTERM)
  watcher = checkpoint.install_sigterm_handler()
  try:
    assert not watcher.preemption_requested(0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.preemption_requested(1)
  finally:
    watcher.uninstall()
  assert signal.getsignal(signal.SIGTERM) == before


def test_multi_process_uses_jax_preemption_sync(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  asked = []
  monkeypatch.setattr(checkpoint.multihost_utils, "reached_preemption_sync_point",
                      lambda step: asked.append(step) or step == 7)
  before = signal.getsignal(signal.SIGTERM)
  watcher = checkpoint.install_sigterm_handler()
  try:
    # JAX's preemption service owns SIGTERM on multi-host runs: no Python handler.
    assert signal.getsignal(signal.SIGTERM) == before
    assert [watcher.preemption_requested(s) for s in (6, 7)] == [False, True]
    assert asked == [6, 7]
    with pytest.raises(ValueError, match="step"):
      watcher.preemption_requested()
  finally:
    watcher.uninstall()

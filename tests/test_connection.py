"""The selection's Gumbel noise: finite for every draw, with the standard Gumbel distribution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cc_jax import connection, model as M, train

# The extremes a float32 uniform draw can reach: 0, and the largest value below 1.
U_EXTREMES = np.array([0.0, np.nextafter(np.float32(1), np.float32(0))], np.float32)


def test_extreme_uniform_draws_give_finite_noise_selection_and_loss():
  # torch's recipe, -log(Exp(1)) with Exp(1) = -log(1 - u), is infinite at u = 0.
  with np.errstate(divide="ignore"):
    assert np.isinf(-np.log(-np.log1p(-np.float32(0))))
  noise = np.asarray(connection.gumbel_from_uniform(jnp.asarray(U_EXTREMES)))
  assert np.isfinite(noise).all()
  np.testing.assert_allclose(noise, [-np.log(-np.log(np.finfo(np.float32).tiny)),
                                     -np.log(-np.log1p(-2.0 ** -24))], rtol=1e-6)

  cfg = M.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=8)
  model = M.Llama(cfg)
  B, T = 2, 6
  tokens = jnp.arange(B * T, dtype=jnp.int32).reshape(B, T) % cfg.vocab_size
  params = dict(nn.unbox(model.init(jax.random.key(0), tokens, jnp.broadcast_to(jnp.arange(T), (B, T)),
                           jnp.ones((B, T), jnp.int32))["params"]))
  params[connection.PARAM_NAME] = nn.unbox(
      connection.init_decision_maker(jax.random.key(1), cfg.hidden_size, cfg.num_layers))
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  batch = {"input_ids": tokens, "attention_mask": jnp.ones((B, T), jnp.int32), "positions": positions,
           "labels": jnp.where(positions >= 3, tokens, train.IGNORE_INDEX), "anchor": jnp.full((B,), 2, jnp.int32),
           "en_input_ids": tokens, "en_attention_mask": jnp.ones((B, T), jnp.int32), "en_positions": positions,
           "en_anchor": jnp.full((B,), T - 1, jnp.int32)}
  # Row 0 draws u = 0 for layer 0, row 1 the largest u below 1 for layer 1.
  u_BL = jnp.asarray([[U_EXTREMES[0], 0.5], [0.5, U_EXTREMES[1]]])
  noise_BL = connection.gumbel_from_uniform(u_BL)
  weights, soft = connection.select(jnp.zeros((B, cfg.num_layers)), noise_BL, 1.0)
  assert np.isfinite(np.asarray(weights)).all() and np.isfinite(np.asarray(soft)).all()
  np.testing.assert_array_equal(np.asarray(weights), [[0, 1], [0, 1]])  # the largest noise wins
  (loss, _), grads = jax.value_and_grad(
      lambda p: train.loss_fn(p, batch, noise_BL, model=model, cfg=train.StepConfig()), has_aux=True)(params)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_no_non_finite_noise_in_1e8_draws_and_the_distribution_is_gumbel():
  """~1e8 draws (the old -log(Exp(1)) gave 15 infinities in these): all finite, and their mean
  and variance are the standard Gumbel's (Euler-Mascheroni constant, pi^2 / 6)."""
  n = 1 << 24

  @jax.jit
  def moments(key):
    g = connection.gumbel_noise(key, (n,))
    return jnp.sum(~jnp.isfinite(g)), jnp.mean(g), jnp.mean(jnp.square(g))

  draws = [moments(jax.random.fold_in(jax.random.key(0), i)) for i in range(6)]
  assert sum(int(bad) for bad, _, _ in draws) == 0
  mean = np.mean([float(m) for _, m, _ in draws])
  var = np.mean([float(m2) for _, _, m2 in draws]) - mean ** 2
  # Standard errors at 1e8 draws: 1.3e-4 (mean), 3e-4 (variance); float32 sums add ~1e-4.
  np.testing.assert_allclose(mean, np.euler_gamma, atol=1e-3)
  np.testing.assert_allclose(var, np.pi ** 2 / 6, atol=3e-3)

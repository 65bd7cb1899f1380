"""CC-Tuning and SFT training steps (docs/method.md §2): pure functions, jitted with shardings.

One `cc` step: English pass (capture every layer's MLP output at the English anchor) ->
Decision Maker and straight-through selection -> non-English pass with the chosen vector
added to layer `inject_layer`'s MLP output at the non-English anchor -> token-summed
cross-entropy -> gradients through all of it -> optax update. `sft` is the same step with
only the non-English pass, so the paper's comparison is one flag apart.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cc_jax import batching, connection, loss as losses, optim, sharding as sh
from cc_jax.connection import ConnectionConfig
from cc_jax.model import Llama

IGNORE_INDEX = losses.IGNORE_INDEX
METHODS = ("cc", "sft")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # the model's params plus `source_select` (the Decision Maker) for cc
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
  method: str = "cc"
  connection: ConnectionConfig = ConnectionConfig()
  num_microbatches: int = 1  # gradient accumulation
  loss_chunk_len: int = 0  # LM head + cross-entropy this many positions at a time; 0 = all at once
  trainable: str = "all"  # optim.TRAINABLE: which params get gradients and optimizer state

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"cc.method={self.method!r}; expected one of {METHODS}")
    if self.trainable not in optim.TRAINABLE:
      raise ValueError(f"optim.trainable={self.trainable!r}; expected one of {optim.TRAINABLE}")


DROPOUT_STREAM = 1  # fold_in(microbatch key, this) is the LoRA dropout key

ENGLISH_KEYS = ("en_input_ids", "en_attention_mask", "en_positions", "en_anchor")


def step_inputs(batch: Mapping, method: str) -> dict:
  """The batch fields a step reads. sft has no English pass; its English fields left in would
  make every English bucket a program of its own (up to 25 instead of 5 at cutoff 1024)."""
  return dict(batch) if method == "cc" else {k: v for k, v in batch.items() if k not in ENGLISH_KEYS}


def program_count(method: str, buckets, en_buckets) -> int:
  """Distinct train-step programs a run can compile: one per (length, English length) bucket pair."""
  return len(buckets) * (len(en_buckets) if method == "cc" else 1)


def model_params(params: Mapping) -> dict:
  """The decoder's parameters (everything but the Decision Maker)."""
  return {k: v for k, v in params.items() if k != connection.PARAM_NAME}


def gather_rows(x_BT, index_B):
  """x[b, index[b]] for every row."""
  return jnp.take_along_axis(x_BT, index_B[:, None], axis=1)[:, 0]


def english_activations(model: Llama, params, batch, rngs=None) -> jax.Array:
  """Step 1: every layer's MLP output at the English anchor, (L, B, D). No LM head."""
  out = model.apply({"params": model_params(params)}, batch["en_input_ids"], batch["en_positions"],
                    batch["en_attention_mask"], capture_at_B=batch["en_anchor"], compute_logits=False, rngs=rngs)
  return out.captured_LBD


def loss_fn(params, batch, noise_BL, dropout_rng=None, *, model: Llama, cfg: StepConfig):
  """Summed loss of one (micro)batch and its diagnostics.

  Args:
    params: model params (+ `source_select` for cc).
    batch: dict of (B, T) arrays from cc_jax.batching (labels unshifted, -100 ignored).
    noise_BL: Gumbel noise for the selection (unused by sft or argmax selection).
    dropout_rng: key of the LoRA adapters' dropout (used when lora.dropout > 0), or None for
      none. The English pass draws masks too, as PEFT's modules in training mode do under no_grad.
    model: the Llama module (its `inject_layer` is where the vector goes).
    cfg: method and selection settings.

  Returns:
    (loss_sum, aux) where aux has `tokens` (label count), and for cc `selected` (L,) layer
    counts and `entropy_sum` (summed decision entropy over real examples).
  """
  decoder = {"params": model_params(params)}
  english_rngs = rngs = None
  if dropout_rng is not None:
    english_key, key = jax.random.split(dropout_rng)
    english_rngs, rngs = {"dropout": english_key}, {"dropout": key}
  aux = {}
  inject = None
  if cfg.method == "cc":
    english_LBD = english_activations(model, params, batch, english_rngs)
    anchor_tokens_B = gather_rows(batch["input_ids"], batch["anchor"])
    anchor_embed_BD = model.apply(decoder, anchor_tokens_B, method=Llama.embed)
    vector_BD, weights_BL, scores_BL = connection.connect(
        params[connection.PARAM_NAME]["kernel"], english_LBD, anchor_embed_BD, noise_BL, cfg.connection)
    inject = (vector_BD, batch["anchor"])
    real_B = jnp.any(batch["labels"] != IGNORE_INDEX, axis=-1).astype(jnp.float32)
    selected_L, mean_entropy = connection.selection_stats(weights_BL, scores_BL, real_B)
    aux.update(selected=selected_L, entropy_sum=mean_entropy * jnp.sum(real_B), examples=jnp.sum(real_B))
  chunked = 0 < cfg.loss_chunk_len < batch["input_ids"].shape[1]
  out = model.apply(decoder, batch["input_ids"], batch["positions"], batch["attention_mask"], inject=inject,
                    compute_logits=not chunked, rngs=rngs)
  if chunked:  # the (B, T, V) logits never exist whole
    logits_fn = lambda h: model.apply(decoder, h, method=Llama.logits)  # noqa: E731
    loss_sum, tokens = losses.chunked_token_loss_sum(out.hidden_BTD, batch["labels"], logits_fn,
                                                     cfg.loss_chunk_len)
  else:
    loss_sum, tokens = losses.token_loss_sum(out.logits_BTV, batch["labels"])
  aux["tokens"] = tokens
  return loss_sum, aux


def microbatch_key(rng: jax.Array, step: jax.Array, micro: int | jax.Array) -> jax.Array:
  """The key of one microbatch's randomness, derived from (run rng, step, microbatch)."""
  return jax.random.fold_in(jax.random.fold_in(rng, step), micro)


def accumulate_gradients(params, batch, rng, step, *, model: Llama, cfg: StepConfig, frozen=None):
  """Sums loss and gradients over microbatches, then divides by the total label tokens,
  so accumulation equals one big batch (never an average of per-microbatch means).

  Gradients are of `params` only; `frozen` params (`optim.split_trainable`) take part in the
  forward pass but are never differentiated.
  """
  num_layers = model.cfg.num_layers
  frozen = {} if frozen is None else frozen
  loss_of = functools.partial(loss_fn, model=model, cfg=cfg)
  grad_fn = jax.value_and_grad(lambda p, *args: loss_of(optim.join(p, frozen), *args), has_aux=True)
  micro = batching.split_microbatches(batch, cfg.num_microbatches)

  def body(carry, xs):
    index, mb = xs
    key = microbatch_key(rng, step, index)
    noise = connection.gumbel_noise(key, (mb["input_ids"].shape[0], num_layers))
    dropout_rng = jax.random.fold_in(key, DROPOUT_STREAM)  # a stream apart from the noise's; unused without LoRA
    (loss_sum, aux), grads = grad_fn(params, mb, noise, dropout_rng)
    carry = jax.tree.map(jnp.add, carry, (loss_sum, aux, grads))
    return carry, None

  zeros = jax.tree.map(jnp.zeros_like, params)
  aux0 = {"tokens": jnp.zeros((), jnp.float32)}
  if cfg.method == "cc":
    aux0.update(selected=jnp.zeros((num_layers,), jnp.float32), entropy_sum=jnp.zeros(()),
                examples=jnp.zeros(()))
  (loss_sum, aux, grads), _ = jax.lax.scan(
      body, (jnp.zeros(()), aux0, zeros), (jnp.arange(cfg.num_microbatches), micro))
  tokens = jnp.maximum(aux["tokens"], 1.0)
  grads = jax.tree.map(lambda g: g / tokens, grads)
  return loss_sum / tokens, aux, grads


def train_step(state: TrainState, batch, rng, *, model: Llama, tx: optax.GradientTransformation,
               schedule: Callable, cfg: StepConfig) -> tuple[TrainState, dict]:
  """One optimizer step. Per-step randomness comes from fold_in(rng, step). Frozen params pass
  through untouched."""
  trainable, frozen = optim.split_trainable(state.params, cfg.trainable)
  loss, aux, grads = accumulate_gradients(trainable, batch, rng, state.step, model=model, cfg=cfg, frozen=frozen)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  params = optim.join(optax.apply_updates(trainable, updates), frozen)
  metrics = {"loss": loss, "tokens": aux["tokens"], "grad_norm": optax.global_norm(grads),
             "learning_rate": schedule(state.step)}
  if cfg.method == "cc":
    metrics["selected_layers"] = aux["selected"]
    metrics["decision_entropy"] = aux["entropy_sum"] / jnp.maximum(aux["examples"], 1.0)
  return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params, batch, *, model: Llama, cfg: StepConfig) -> dict:
  """Loss with deterministic (argmax) selection, for held-out evaluation."""
  eval_cfg = dataclasses.replace(cfg, connection=dataclasses.replace(cfg.connection, selection="argmax"))
  loss_sum, aux = loss_fn(params, batch, None, model=model, cfg=eval_cfg)
  return {"loss_sum": loss_sum, "tokens": aux["tokens"]}


def init_train_state(rng, model_params_tree, *, model: Llama, tx, cfg: StepConfig) -> TrainState:
  """A fresh TrainState around given (boxed or plain) model params; adds the Decision Maker.
  Frozen params are held in the compute dtype: they need no float32 master copy."""
  params = dict(model_params_tree)
  if cfg.method == "cc":
    params[connection.PARAM_NAME] = connection.init_decision_maker(
        rng, model.cfg.hidden_size, model.cfg.num_layers, model.cfg.jnp_param_dtype)
  trainable, frozen = optim.split_trainable(params, cfg.trainable)
  frozen = jax.tree.map(lambda x: x.astype(model.cfg.jnp_dtype), frozen)
  return TrainState(jnp.zeros((), jnp.int32), optim.join(trainable, frozen), tx.init(trainable))


def jit_train_step(model: Llama, tx, schedule, cfg: StepConfig, mesh, state_shardings):
  """The jitted, sharded train step: state donated, batch split over (data, fsdp). Call, lower or
  compile it under `jax.set_mesh(mesh)` and the logical axis rules (`make_train_step` does)."""
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, cfg=cfg)
  return jax.jit(step, in_shardings=(state_shardings, sh.batch_sharding(mesh), None),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def make_train_step(model: Llama, tx, schedule, cfg: StepConfig, mesh, rules, state_shardings):
  """`jit_train_step`, called under the mesh and the rules."""
  jitted = jit_train_step(model, tx, schedule, cfg, mesh, state_shardings)

  def run(state, batch, rng):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(state, batch, rng)
  return run


def create_sharded_state(rng, *, model: Llama, tx, cfg: StepConfig, mesh, rules,
                         load_params: Callable[[Any], Any] | None = None) -> tuple[TrainState, Any]:
  """Creates the TrainState directly in its shardings (a 7B copy never sits on one device).

  eval_shape(init) gives the logical axis names of every parameter and optimizer slot;
  the rules turn them into NamedShardings; init (or loading) then runs under jit with
  those out_shardings.

  Args:
    rng: PRNG key for random init and the Decision Maker.
    model, tx, cfg: the decoder, optimizer and step settings.
    mesh, rules: device mesh and logical-axis rules.
    load_params: optional function(target) -> params that restores pretrained decoder
      params into `target`, a pytree of jax.ShapeDtypeStruct with shardings.

  Returns:
    (state, state_shardings).
  """
  init_rng, dm_rng = jax.random.split(rng)
  init, abstract, shardings = _state_init(model=model, tx=tx, cfg=cfg, mesh=mesh, rules=rules)
  if load_params is None:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = jax.jit(lambda r, d: nn.unbox(init(r, d)), out_shardings=shardings)(init_rng, dm_rng)
    return state, shardings
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        model_params(nn.unbox(abstract).params), model_params(shardings.params))
  # A pretrained model has no LoRA adapters: those come from init (the rest of init is dead code).
  params = load_params(optim.split_trainable(target, "lora")[1] if model.cfg.lora else target)

  def build(base, init_rng, dm_rng):
    adapters = {}
    if model.cfg.lora:
      adapters = optim.split_trainable(nn.unbox(_init_params(model, init_rng)), "lora")[0]
    return nn.unbox(init_train_state(dm_rng, optim.join(adapters, base), model=model, tx=tx, cfg=cfg))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(build, out_shardings=shardings)(params, init_rng, dm_rng)
  return state, shardings


def _init_params(model: Llama, rng):
  """The model's randomly initialised (boxed) params."""
  dummy = jnp.zeros((1, 4), jnp.int32)
  return model.init(rng, dummy, dummy, dummy + 1)["params"]


def _state_init(*, model: Llama, tx, cfg: StepConfig, mesh, rules):
  """(init function, its boxed abstract output, the state's NamedShardings)."""
  def init(init_rng, dm_rng):
    return init_train_state(dm_rng, _init_params(model, init_rng), model=model, tx=tx, cfg=cfg)

  key = jax.random.key(0)
  abstract = jax.eval_shape(init, key, key)
  return init, abstract, sh.logical_shardings(abstract, mesh, rules)


def abstract_train_state(*, model: Llama, tx, cfg: StepConfig, mesh, rules) -> tuple[TrainState, Any]:
  """(TrainState of jax.ShapeDtypeStruct with shardings, shardings): a restore target."""
  _, abstract, shardings = _state_init(model=model, tx=tx, cfg=cfg, mesh=mesh, rules=rules)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.unbox(abstract), shardings)
  return target, shardings

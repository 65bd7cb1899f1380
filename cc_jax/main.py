"""Entry point: `python -m cc_jax.main --config=configs/<preset>.py [--workdir=DIR] [--config.key=value]`.

Parses flags and dispatches on config.task; the work itself lives in library modules.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cc_jax import compile_cache, console, errors, runtime, validate, xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (overrides config.workdir).")
flags.DEFINE_bool("print_config", False, "Print the full config (YAML) before running; it is also in <workdir>/run.json.")
flags.mark_flags_as_required(["config"])


def generate(config) -> None:
  """Generates a reply to config.generate.prompt with the model's chat template."""
  import numpy as np

  from cc_jax import convert, data, generate as gen, runtime
  from cc_jax.model import Llama, unstack_layers

  directory = runtime.model_dir(config)
  if directory is None:
    raise app.UsageError("task=generate needs config.model.path (a converted model or 'smollm2')")
  tokenizer = runtime.load_tokenizer(config)
  fmt = data.chat_format(tokenizer, data.TokenizeOptions.from_config(config.data))
  (prompt_ids,) = fmt.encode_ids([config.generate.prompt])
  model_cfg = runtime.model_config(config)
  model = Llama(model_cfg)
  params = convert.load_params(directory)
  if not model_cfg.scan_layers:
    params = unstack_layers(params, model_cfg.num_layers)
  tokens, mask = gen.left_pad([prompt_ids], data.pad_token_id(tokenizer))
  new, lengths = gen.greedy_generate(model, params, tokens, mask, np.asarray(fmt.stop_ids, np.int32),
                                     max_new_tokens=config.generate.max_new_tokens)
  reply = np.asarray(new)[0, :int(lengths[0])].tolist()
  print(tokenizer.decode(reply, skip_special_tokens=True))


def fit_matrix(config, workdir) -> None:
  from cc_jax import transform
  m = config.matrix
  meta = transform.fit_for_run(
      workdir, num_samples=m.num_samples, seed=m.seed, batch_size=m.batch_size, step=m.step or None,
      options=transform.SolveOptions(ridge=m.ridge, per_layer=m.per_layer, streaming=m.streaming),
      data_source=m.data_source or None, progress=config.log.progress_bar)
  if runtime.is_writer():
    print(f"Transform Matrix from {meta['num_samples']} pairs of {meta['checkpoint']}: "
          f"MSE {meta['mse']:.4g}, R^2 {meta['r2']:.4f}; written to {workdir}/matrix")


def evaluate(config, workdir) -> None:
  """Evaluates a training run (a workdir with run.json), or with no run the model of
  config.model.path itself (plain mode)."""
  import pathlib

  from cc_jax import evaluate as ev, loop, report
  e = config.eval
  if not e.source:
    raise app.UsageError("task=eval needs config.eval.source: a local benchmark directory or 'hub'")
  options = ev.EvalOptions(
      source=e.source, benchmarks=tuple(e.benchmarks), languages=tuple(e.languages), limit=e.limit, seed=e.seed,
      modes=tuple(e.modes), batch_size=e.batch_size, max_batch_tokens=e.max_batch_tokens,
      continuous=e.continuous, decode_chunk=e.decode_chunk, max_new_tokens=e.max_new_tokens,
      max_prompt_len=e.max_prompt_len, stop_strings=tuple(e.stop_strings), shared_prefix=e.shared_prefix,
      label=e.label, protocol=e.protocol)
  trained_run = bool(workdir) and (pathlib.Path(workdir) / loop.RUN_FILE).exists()
  if not (trained_run or e.out_dir or workdir):
    raise app.UsageError("task=eval of a model without a training run needs --config.eval.out_dir (or --workdir)")
  out_dir = pathlib.Path(e.out_dir or pathlib.Path(workdir) / "eval")
  if trained_run:
    records = ev.evaluate_run(workdir, options, out_dir, step=e.step or None, progress=config.log.progress_bar)
  elif config.model.path:
    print(f"{workdir or 'no workdir'}: no training run; evaluating {config.model.path} itself (plain mode)")
    records = ev.evaluate_model(config, options, out_dir, progress=config.log.progress_bar)
  else:
    raise app.UsageError(f"task=eval: {workdir}/{loop.RUN_FILE} does not exist and config.model.path is empty; "
                         "name a training run (--workdir) or a model (--config.model.path)")
  if runtime.is_writer():
    print(f"{len(records)} predictions scored; table in {out_dir / 'results.md'}, charts in "
          f"{out_dir / 'results.png'} and {out_dir / report.BY_LANGUAGE_PNG}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  added = xla_flags.set_cpu_defaults()  # before the first JAX computation creates the backend
  if added:
    logging.debug("CPU-only machine: XLA_FLAGS += %s (see cc_jax/xla_flags.py)", " ".join(added))
  config = FLAGS.config
  workdir = FLAGS.workdir or config.workdir
  if config.task == "demo":
    workdir = workdir or "cc_jax_demo"
  if workdir and "://" not in workdir:
    workdir = os.path.abspath(workdir)
  config.workdir = workdir or ""  # so run.json records where the run went
  # generate's stdout is the reply alone (pipeable); every other task starts with the header there.
  print(console.run_header(config, workdir), file=sys.stderr if config.task == "generate" else sys.stdout, flush=True)
  if FLAGS.print_config:
    print(config, flush=True)
  try:  # before any work: a run that would do nothing, or fail later, stops here
    validate.check(config)
  except ValueError as error:
    sys.exit(str(error))  # the message alone (exit status 1), not the flags help
  compile_cache.enable(config.compilation_cache_dir)
  runtime.maybe_initialize_distributed()  # every task: under srun or on a pod each process joins the job
  try:
    validate.check_mesh(config, runtime.device_count())
  except ValueError as error:
    sys.exit(str(error))
  try:
    if config.task in ("matrix", "eval") and workdir:  # these read the run's own settings from run.json
      overridden = config_flags.get_override_values(FLAGS["config"])
      validate.check_run(config, workdir, config.task, keys=[k for k in overridden if k in validate.RUN_KEYS or
                                                                  k.startswith("model.arch.")])
    run_task(config, workdir)
  except errors.RunStopped as error:
    sys.exit(f"{type(error).__name__}: {error}")  # says what and where; a traceback adds nothing
  finally:
    logging.info(compile_cache.summary())


def run_task(config, workdir: str) -> None:
  if config.task == "train":
    from cc_jax import loop
    if not workdir:
      raise app.UsageError("task=train needs --workdir (or config.workdir)")
    summary = loop.train_loop(config, workdir)
    loss = summary["metrics"].get("loss", float("nan"))
    done = (f"loss {loss:.4f}" if summary["steps_run"] else
            f"the workdir's run was already complete, nothing to do (final loss {loss:.4f})")
    print(f"{summary['status']} at step {summary['step']}; {done}; checkpoints in {summary['workdir']}/checkpoints")
  elif config.task == "eval":
    evaluate(config, workdir)
  elif config.task in ("matrix", "pipeline"):
    if not workdir:
      raise app.UsageError(f"task={config.task} needs --workdir: the training run")
    if config.task == "pipeline":
      from cc_jax import loop
      summary = loop.train_loop(config, workdir)
      if summary["status"] != "completed":
        print(f"training {summary['status']} at step {summary['step']}; rerun to resume")
        return
    if config.cc.method == "cc":
      fit_matrix(config, workdir)
    if config.task == "pipeline":
      evaluate(config, workdir)
  elif config.task == "generate":
    generate(config)
  elif config.task == "demo":
    from cc_jax import demo
    demo.run_demo(config, workdir)
  else:
    raise app.UsageError(f"config.task={config.task!r}; expected train, matrix, eval, pipeline, generate or demo")


if __name__ == "__main__":
  console.run(main)

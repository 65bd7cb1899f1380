"""Will this run fit? Compiles a config's programs for a target without its hardware (cc_jax.aot).

  # a TPU slice (needs libtpu: pip install -r requirements-tpu.txt; no TPU needed)
  JAX_PLATFORMS=cpu python launch/aot.py --config=configs/llama3_8b.py --topology=v6e:2x4
  JAX_PLATFORMS=cpu python launch/aot.py --config=configs/tiny.py --topology=v5e:2x2 --num_slices=2
  # an 8-GPU node of 80 GB, estimated on 8 fake CPU devices
  python launch/aot.py --config=configs/llama3_8b.py --cpu_devices=8 --hbm_gib=80

Prints, per device: arguments, outputs, temporaries and peak against the chip's memory, FLOPs
per step and the step time they imply at --mfu, and each program's compile time. Exits 1 when
a program does not fit (so a launch script can gate on it), naming the levers.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from any directory

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cc_jax import console, xla_flags  # noqa: E402  (neither imports JAX)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A cc_jax config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("topology", None, "A TPU topology, e.g. v6e:2x4, v5p:2x2x4, v5e:2x2.")
flags.DEFINE_integer("num_slices", 1, "With --topology: this many slices joined over the data-center network.")
flags.DEFINE_integer("cpu_devices", None, "Estimate for a GPU node: this many fake CPU devices.")
flags.DEFINE_float("hbm_gib", 80.0, "With --cpu_devices: memory per device in GiB (H100 80, H200 141).")
flags.DEFINE_float("peak_tflops", 989.0, "With --cpu_devices: dense bf16 TFLOP/s per device (H100/H200: 989).")
flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the step-time column.")
flags.DEFINE_enum("buckets", "largest", ["largest", "all"],
                  "Train-step shapes: the largest (T, T_en) pair (memory grows with length) or every pair.")

flags.DEFINE_list("programs", ["train", "matrix", "eval"], "Which programs to compile.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(FLAGS.topology) == bool(FLAGS.cpu_devices):
    raise app.UsageError("name one target: --topology=v6e:2x4 or --cpu_devices=8")
  if FLAGS.cpu_devices:  # before JAX creates its CPU backend
    xla_flags.add_flags({"--xla_force_host_platform_device_count": str(FLAGS.cpu_devices)})
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from cc_jax import aot

  config = FLAGS.config
  if FLAGS.topology:
    chip = aot.Chip.for_topology(FLAGS.topology)
    devices = aot.tpu_devices(FLAGS.topology, FLAGS.num_slices)
    target = f"{FLAGS.topology} x {FLAGS.num_slices} slice(s): {len(devices)} {chip.name} chips"
    hbm, peak = chip.hbm_bytes, chip.peak_flops
  else:
    devices = jax.devices("cpu")[:FLAGS.cpu_devices]
    target = (f"ESTIMATE for {FLAGS.cpu_devices} GPUs of {FLAGS.hbm_gib:g} GiB, compiled by XLA:CPU on "
              f"{FLAGS.cpu_devices} fake devices (same shardings and buffers; fusion and layouts differ: "
              "for Llama-3.1-8B on 8 devices, within 4% of TPU XLA's peak)")
    hbm, peak = int(FLAGS.hbm_gib * aot.GIB), FLAGS.peak_tflops * 1e12
  print(f"{target}\nmesh data={config.mesh.data} fsdp={config.mesh.fsdp} tensor={config.mesh.tensor}; "
        f"global batch {config.data.batch_size} in {config.optim.grad_accum_steps} microbatch(es), cutoff "
        f"{config.data.cutoff_len}, remat {config.model.remat_policy}, loss_chunk_len {config.model.loss_chunk_len}",
        flush=True)
  reports = aot.check(config, devices, FLAGS.buckets, tuple(FLAGS.programs))
  print(aot.table(reports, hbm_bytes=hbm, peak_flops=peak, mfu=FLAGS.mfu))
  print(f"{len(reports)} programs compiled in {sum(r.compile_seconds for r in reports):.0f} s")
  if not aot.fits(reports, hbm):
    logging.error("does not fit. Levers: %s", "; ".join(aot.LEVERS))
    sys.exit(1)
  print("every program fits")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  console.run(main)

"""cc_jax's XLA:CPU options: added on CPU-only machines, never over the user's own value."""

from cc_jax import xla_flags

OPTION = "--xla_cpu_experimental_ynn_fusion_type"


def test_added_on_cpu_and_kept_with_other_flags():
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.set_cpu_defaults(env) == [f"{OPTION}="]
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {OPTION}="
  assert xla_flags.set_cpu_defaults(env) == []  # a second call adds nothing
  assert env["XLA_FLAGS"].count(OPTION) == 1


def test_user_value_wins():
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{OPTION}=dot"}
  assert xla_flags.set_cpu_defaults(env) == []
  assert env["XLA_FLAGS"] == f"{OPTION}=dot"


def test_not_added_for_accelerators():
  for platforms in ("cuda", "tpu", "cuda,cpu"):
    env = {"JAX_PLATFORMS": platforms}
    assert xla_flags.set_cpu_defaults(env) == []
    assert "XLA_FLAGS" not in env


def test_cpu_only_detection_without_jax_platforms(monkeypatch):
  monkeypatch.setattr(xla_flags, "accelerator_plugins", lambda: [])
  assert xla_flags.cpu_only({})
  monkeypatch.setattr(xla_flags, "accelerator_plugins", lambda: ["xla_cuda12"])
  assert not xla_flags.cpu_only({})
  env = {}
  assert xla_flags.set_cpu_defaults(env) == [] and env == {}


def test_this_machine_has_no_accelerator_plugin():
  assert xla_flags.accelerator_plugins() == []  # the tests run on CPU-only machines

"""cc_jax: CC-Tuning (ACL 2025) for Llama-style decoders in JAX/Flax."""

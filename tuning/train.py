"""One training run: a model, a depth scheme, a dataset; the best model's test metrics.

The loop follows Tajbakhsh et al. 2016: SGD with momentum, the new head at 10x
the tuned layers' learning rate, the rate decayed once per epoch, and early
stopping on validation AUC; the best model is checkpointed with orbax and
restored for the test evaluation. Frozen blocks run once per image, not once
per epoch, where that changes nothing but the cost (tuning/feature_cache.py).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from tuning import config as config_lib
from tuning import (augment, datasets, depth, feature_cache, input_pipeline, models, pretrained,
                    schedule)
from tuning.datasets import medmnist
from tuning.preprocess import MINUS_ONE_TO_ONE
from tuning.tasks import classification

State = dict[str, Any]


def run_name(config: ml_collections.ConfigDict) -> str:
  name = f"{config.dataset}-{config.arch}-{config.scheme}-f{config.train_fraction:g}-s{config.seed}"
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def create_model(config: ml_collections.ConfigDict, num_classes: int, rng: jax.Array):
  """The model, its initial variables, input convention and depth scheme.

  `scratch` uses the same architecture variant and input convention as the
  pretrained runs, so the only difference is where the weights start.
  """
  block_names = type(models.create(config.arch, 1)).block_names
  scheme = depth.parse_scheme(config.scheme, block_names)
  loaded = pretrained.from_config(config)
  if loaded:
    source_model, source_vars, preprocess = loaded
    model = source_model.clone(num_classes=num_classes)
  else:
    if scheme.pretrained:
      raise ValueError(f"scheme {config.scheme!r} fine-tunes pretrained weights, but "
                       "config.weights and config.pretrained are empty")
    model, preprocess = models.create(config.arch, num_classes), MINUS_ONE_TO_ONE
  images = jnp.zeros((1, config.image_size, config.image_size, 3))
  init = lambda r, x, start=0: model.init(r, x, train=False, start=start)
  if not scheme.pretrained:
    return model, jax.tree.map(np.asarray, jax.jit(init)(rng, images)), preprocess, scheme
  # Only the fresh head keeps its initial values, so only the head is initialised
  # (compiled), on what enters it: the values a whole-model init draws (Flax folds
  # each module's path into its RNG), without compiling that init, which costs
  # more than a short run's training. The other blocks need only their shapes.
  head = len(block_names) - 1
  shapes = jax.eval_shape(init, rng, images)
  head_input = jax.eval_shape(lambda v: model.apply(v, images, stop=head), shapes)
  fresh = jax.jit(init, static_argnums=2)(rng, jnp.zeros(head_input.shape), head)
  variables = pretrained.transplant(
      source_vars, {c: {**blocks, **fresh.get(c, {})} for c, blocks in shapes.items()},
      reinit=(block_names[-1],))
  return model, jax.tree.map(np.asarray, variables), preprocess, scheme


def make_optimizer(config: ml_collections.ConfigDict, scheme: depth.Scheme, params: dict,
                   block_names: tuple[str, ...], steps_per_epoch: int):
  """Each parameter's learning-rate multiplier (None: frozen) and the optimizer over them.

  Scratch runs train every layer at `scratch_lr`; pretrained ones at `lr`, the new
  head at `head_lr_mult` x, with the scheme's strategy (`llrd`: layer-wise decay;
  `l2sp`: pulled toward the pretrained weights, passed in as `params`).
  """
  mults = schedule.multipliers(
      params, block_names, scheme.trainable_from,
      head_lr_mult=config.head_lr_mult if scheme.pretrained else 1.0,
      layer_decay=config.layer_decay if scheme.name == "llrd" else None,
      bias_lr_mult=config.bias_lr_mult, rules=config.schedule)
  head = block_names[-1]
  anchor = {block: jax.tree.map(lambda _: None, tree) if block == head else tree
            for block, tree in params.items()}
  tx = schedule.make_optimizer(
      mults, learning_rate=config.lr if scheme.pretrained else config.scratch_lr,
      momentum=config.momentum, steps_per_epoch=steps_per_epoch,
      decay_per_epoch=config.lr_decay_per_epoch, weight_decay=config.weight_decay,
      l2sp_anchor=anchor if scheme.name == "l2sp" else None,
      l2sp_strength=config.l2sp_strength if scheme.name == "l2sp" else 0.0)
  return mults, tx


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> State:
  """Explicit training state; `batch_stats` is `{}` for models without BatchNorm."""
  return {
      "step": jnp.zeros((), jnp.int32), "params": variables["params"],
      "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(variables["params"]),
  }


def model_variables(state: State) -> dict:
  return {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}


def make_train_step(model, tx: optax.GradientTransformation, trainable_from: int, rng: jax.Array,
                    start: int = 0) -> Callable[[State, dict], tuple[State, dict]]:
  """The jittable step; `start > 0`: batches hold what enters block `start` (cached features)."""
  def train_step(state: State, batch: dict) -> tuple[State, dict]:
    dropout_rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      logits, updates = model.apply(
          model_variables({**state, "params": params}), batch["image"], train=True,
          trainable_from=trainable_from, start=start, mutable=["batch_stats"],
          rngs={"dropout": dropout_rng})
      return classification.cross_entropy_loss(logits, batch["label"]), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    step_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {
        "step": state["step"] + 1,
        "params": optax.apply_updates(state["params"], step_updates),
        "batch_stats": updates.get("batch_stats", {}),
        "opt_state": opt_state,
    }, {"loss": loss}
  return train_step


def make_eval_step(model, start: int = 0) -> Callable[[State, jax.Array], jax.Array]:
  def eval_step(state: State, images: jax.Array) -> jax.Array:
    logits = model.apply(model_variables(state), images, train=False, start=start)
    return jax.nn.softmax(logits)
  return eval_step


def predict(eval_step, state: State, batches: Iterable[dict], sharding) -> tuple[np.ndarray, np.ndarray]:
  """Labels and class probabilities over a split, padding rows dropped."""
  probs, labels = [], []
  for batch in batches:
    out = np.asarray(eval_step(state, jax.device_put(batch["image"], sharding)))
    probs.append(out[batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(labels), np.concatenate(probs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one run, returns its result row (also appended to `workdir/results.jsonl`)."""
  config_lib.validate(config)
  start = time.perf_counter()
  dataset = datasets.load(config.dataset, config.data_dir, load_size=config.load_size,
                          split_fractions=config.split_fractions, split_seed=config.split_seed)
  train_split = medmnist.subsample(dataset.train, config.train_fraction, config.seed)
  train_split = datasets.balance(train_split, config.seed) if config.balance else train_split
  if len(train_split.labels) < config.batch_size:
    raise ValueError(
        f"config.train_fraction = {config.train_fraction:g}"
        f"{' with config.balance' if config.balance else ''} leaves {len(train_split.labels)} "
        f"training images of {config.dataset} (at least one per class), fewer than "
        f"config.batch_size = {config.batch_size}; raise the fraction or lower the batch size")
  train_split, augmentation = augment.from_config(train_split, config)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  model, variables, preprocess, scheme = create_model(config, dataset.num_classes, init_rng)
  block_names = type(model).block_names

  steps = input_pipeline.steps_per_epoch(len(train_split.labels), config.batch_size)
  mults, tx = make_optimizer(config, scheme, variables["params"], block_names, steps)

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put(create_train_state(variables, tx), replicated)
  # With a cache, blocks below `start_block` run once per image, into `features`,
  # and the steps start above them; without, every step runs every block.
  start_block = scheme.trainable_from if feature_cache.applies(config, scheme) else 0
  train_step = jax.jit(make_train_step(model, tx, scheme.trainable_from, dropout_rng,
                                       start=start_block), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, start=start_block))
  name = run_name(config)
  splits = {"train": train_split, "val": dataset.val, "test": dataset.test}
  features, cache_s = None, None
  if start_block:
    cache_start = time.perf_counter()
    trunk = jax.jit(functools.partial(model.apply, train=False, stop=start_block))
    frozen = jax.device_put(variables, replicated)
    features = feature_cache.build(
        lambda images: trunk(frozen, images), splits, batch_size=config.batch_size,
        image_size=config.image_size, preprocess=preprocess, sharding=data_sharding,
        directory=workdir, progress=config.progress, desc=f"{name} features")
    cache_s = round(time.perf_counter() - cache_start, 2)

  def eval_batches(split: str):
    if start_block:
      return input_pipeline.feature_eval_batches(
          features[split], splits[split].labels, batch_size=config.batch_size)
    return input_pipeline.eval_batches(splits[split], batch_size=config.batch_size,
                                       image_size=config.image_size, preprocess=preprocess)

  latest, best = (ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints", name, kind)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)) for kind in ("latest", "best"))
  state, progress = resume(latest, state, config)
  resumed_at = progress["epoch"]
  if start_block:
    batches = iter(input_pipeline.feature_train_batches(
        features["train"], train_split.labels, batch_size=config.batch_size, seed=config.seed,
        start_epoch=progress["epoch"]))
  else:
    batches = iter(input_pipeline.train_batches(
        train_split, batch_size=config.batch_size, image_size=config.image_size,
        preprocess=preprocess, seed=config.seed, start_epoch=progress["epoch"],
        augment=augmentation))
  for epoch in range(progress["epoch"] + 1, config.epochs + 1):
    if progress["epoch"] - progress["best_epoch"] >= config.patience:
      break  # stopped early before an interruption
    losses = []
    bar = tqdm(range(steps), desc=f"{name} epoch {epoch}/{config.epochs}", leave=False,
               disable=not config.progress)
    for _ in bar:
      state, metrics = train_step(state, jax.device_put(next(batches), data_sharding))
      losses.append(metrics["loss"])
      if len(losses) > 1:  # waiting on the previous step keeps one step in flight
        bar.set_postfix(loss=f"{float(losses[-2]):.4f}", refresh=False)
    train_loss = float(np.mean(losses))
    if not np.isfinite(train_loss):  # diverged: keep the last good checkpoints, record it
      progress["diverged_at_epoch"] = epoch
      break
    val = classification.evaluate(*predict(eval_step, state, eval_batches("val"), data_sharding))
    progress["history"].append({"epoch": epoch, "train_loss": train_loss, "val_auc": val["auc"]})
    if val["auc"] > progress["best_auc"]:
      progress.update(best_auc=val["auc"], best_epoch=epoch)
      if epoch not in best.all_steps():  # saved already if killed before `latest` below
        best.save(epoch, args=ocp.args.StandardSave(state))
    progress["epoch"] = epoch
    # `best` first, then `latest`: a kill between the two only repeats this epoch.
    best.wait_until_finished()
    latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))
    latest.wait_until_finished()
  best_epoch, history = progress["best_epoch"], progress["history"]
  val = test = {}  # diverged before any epoch finished
  predictions = None
  if best_epoch:
    state = best.restore(best_epoch, args=ocp.args.StandardRestore(state))
    # Recomputed from the restored checkpoint: the row proves the model tested is the best one.
    val = classification.evaluate(*predict(eval_step, state, eval_batches("val"), data_sharding))
    test_labels, test_probs = predict(eval_step, state, eval_batches("test"), data_sharding)
    test = classification.evaluate(test_labels, test_probs)
    predictions = save_predictions(workdir, name, test_labels, test_probs)
  latest.close()
  best.close()

  result = {
      "dataset": config.dataset, "arch": config.arch, "scheme": config.scheme,
      "train_fraction": config.train_fraction, "seed": config.seed,
      "test_auc": test.get("auc"), "test_acc": test.get("acc"), "val_auc": val.get("auc"),
      **{f"test_{k}": test.get(k) for k in classification.SENSITIVITY_KEYS},
      "predictions": predictions,
      "best_epoch": best_epoch, "epochs_run": len(history),
      "wall_s": round(time.perf_counter() - start, 2), "resumed_at_epoch": resumed_at,
      "diverged_at_epoch": progress.get("diverged_at_epoch"),
      "n_trainable_params": schedule.count_trainable(variables["params"], mults),
      "n_params": int(sum(np.size(p) for p in jax.tree.leaves(variables["params"]))),
      "n_train": int(len(train_split.labels)), "image_size": config.image_size,
      "batch_size": config.batch_size, "devices": jax.device_count(),
      "feature_cache": bool(start_block), "feature_cache_s": cache_s,
      "weights": pretrained.source(config), "data_sha256": dataset.sha256, "history": history,
      "config": json.loads(config.to_json()), "versions": versions(),
  }
  append_result(os.path.join(workdir, "results.jsonl"), result)
  return result


def save_predictions(workdir: str, name: str, labels: np.ndarray, probs: np.ndarray) -> str:
  """Writes the test split's labels and probabilities (for ROC curves and DeLong tests in
  the report); returns the path relative to `workdir`."""
  relative = os.path.join("predictions", f"{name}.npz")
  path = os.path.join(workdir, relative)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, labels=labels, probs=probs)
  os.replace(path + ".tmp", path)
  return relative


def versions() -> dict[str, str]:
  """What produced a result: Python and the packages whose changes can move the numbers."""
  packages = ("tuning", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
  return {"python": platform.python_version(),
          **{p: importlib.metadata.version(p) for p in packages}}


# Settings that do not change what a run computes: where files are, bars, and the sweep's
# grid axes (a run is one point of them; its own scheme, fraction and seed do count).
_NOT_IDENTITY = ("data_dir", "weights_dir", "progress", "schemes", "train_fractions", "seeds")


def run_identity(config: ml_collections.ConfigDict | dict) -> dict:
  """What makes two runs the same run: the config as JSON gives it back (tuples become
  lists), minus `_NOT_IDENTITY`. A dict is taken as such JSON (a result row's config)."""
  as_json = config if isinstance(config, dict) else json.loads(config.to_json())
  return {k: v for k, v in as_json.items() if k not in _NOT_IDENTITY}


def tree_signature(tree: Any) -> dict[str, str]:
  """`{leaf path: "shape dtype"}`, to tell a checkpoint of another model by name."""
  return {jax.tree_util.keystr(path): f"{np.shape(leaf)} {jnp.result_type(leaf)}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def resume(latest: ocp.CheckpointManager, state: State, config: ml_collections.ConfigDict
           ) -> tuple[State, dict]:
  """The run's state and progress from its last epoch checkpoint, or a fresh start.

  Progress is the epoch, the early-stopping record and the history; with the
  state (params, batch_stats, optimizer state, step, from which the dropout RNG
  and the data position follow) a resumed run continues bit-identically. A
  checkpoint from a different config or model is refused, naming what differs.
  """
  fresh = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "history": [],
           "config": run_identity(config), "tree": tree_signature(state)}
  step = latest.latest_step()
  if step is None:
    return state, fresh
  directory = latest.directory / str(step)
  saved = latest.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
  differs = sorted(k for k in set(saved["config"]) | set(fresh["config"])
                   if saved["config"].get(k) != fresh["config"].get(k))
  if differs:
    raise ValueError(
        f"checkpoint {directory} was written by a different config; it differs in " + ", ".join(
            f"{k} (checkpoint {saved['config'].get(k)!r}, now {fresh['config'].get(k)!r})"
            for k in differs) + "; use another --workdir or delete that checkpoint")
  want, have = fresh["tree"], saved["tree"]
  differs = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
  if differs:
    raise ValueError(
        f"checkpoint {directory} holds another state tree; it differs in {len(differs)} leaves, e.g. "
        + ", ".join(f"{k} (checkpoint {have.get(k)}, now {want.get(k)})" for k in differs[:5])
        + "; use another --workdir or delete that checkpoint")
  restored = latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state)))
  return restored["state"], saved


def append_result(path: str, row: dict) -> None:
  """Appends one JSON line with a single O_APPEND write, then fsyncs.

  One write per line means concurrent writers never interleave within a line,
  and a kill leaves at most one torn last line, which `report.read_results` skips
  and the next append starts a new line after.
  """
  fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    os.write(fd, (("\n" if torn else "") + json.dumps(row, sort_keys=True) + "\n").encode())
    os.fsync(fd)
  finally:
    os.close(fd)

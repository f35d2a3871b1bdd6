"""One training run: a model, a depth scheme, a dataset; the best model's test metrics.

The loop follows Tajbakhsh et al. 2016: SGD with momentum, the new head at 10x
the tuned layers' learning rate, the rate decayed once per epoch, and early
stopping on validation AUC; the best model is checkpointed with orbax and
restored for the test evaluation.
"""
from __future__ import annotations

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
from tuning import depth, input_pipeline, models, pretrained
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
  shape = (1, config.image_size, config.image_size, 3)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros(shape), train=False))(rng)
  variables = jax.tree.map(np.asarray, variables)
  if scheme.pretrained:
    variables = pretrained.transplant(source_vars, variables, reinit=(block_names[-1],))
  return model, variables, preprocess, scheme


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> State:
  """Explicit training state; `batch_stats` is `{}` for models without BatchNorm."""
  return {
      "step": jnp.zeros((), jnp.int32), "params": variables["params"],
      "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(variables["params"]),
  }


def model_variables(state: State) -> dict:
  return {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}


def make_train_step(model, tx: optax.GradientTransformation, trainable_from: int, rng: jax.Array
                    ) -> Callable[[State, dict], tuple[State, dict]]:
  def train_step(state: State, batch: dict) -> tuple[State, dict]:
    dropout_rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      logits, updates = model.apply(
          model_variables({**state, "params": params}), batch["image"], train=True,
          trainable_from=trainable_from, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
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


def make_eval_step(model) -> Callable[[State, jax.Array], jax.Array]:
  def eval_step(state: State, images: jax.Array) -> jax.Array:
    logits = model.apply(model_variables(state), images, train=False)
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
  dataset = medmnist.load(config.dataset, medmnist.data_dir(config.data_dir))
  train_split = medmnist.subsample(dataset.train, config.train_fraction, config.seed)
  if len(train_split.labels) < config.batch_size:
    raise ValueError(
        f"config.train_fraction = {config.train_fraction:g} leaves {len(train_split.labels)} "
        f"training images of {config.dataset} (at least one per class), fewer than "
        f"config.batch_size = {config.batch_size}; raise the fraction or lower the batch size")
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  model, variables, preprocess, scheme = create_model(config, dataset.num_classes, init_rng)
  block_names = type(model).block_names

  steps = input_pipeline.steps_per_epoch(len(train_split.labels), config.batch_size)
  labels = depth.param_labels(variables["params"], block_names, scheme.trainable_from)
  tx = depth.make_optimizer(
      labels, learning_rate=config.lr if scheme.pretrained else config.scratch_lr,
      head_lr_mult=config.head_lr_mult if scheme.pretrained else 1.0,
      momentum=config.momentum, steps_per_epoch=steps, decay_per_epoch=config.lr_decay_per_epoch)

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put(create_train_state(variables, tx), replicated)
  train_step = jax.jit(make_train_step(model, tx, scheme.trainable_from, dropout_rng),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model))
  eval_batches = lambda split: input_pipeline.eval_batches(
      split, batch_size=config.batch_size, image_size=config.image_size, preprocess=preprocess)

  name = run_name(config)
  latest, best = (ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints", name, kind)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)) for kind in ("latest", "best"))
  state, progress = resume(latest, state, config)
  resumed_at = progress["epoch"]
  batches = iter(input_pipeline.train_batches(
      train_split, batch_size=config.batch_size, image_size=config.image_size,
      preprocess=preprocess, seed=config.seed, start_epoch=progress["epoch"]))
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
    val = classification.evaluate(*predict(eval_step, state, eval_batches(dataset.val), data_sharding))
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
    val = classification.evaluate(*predict(eval_step, state, eval_batches(dataset.val), data_sharding))
    test_labels, test_probs = predict(eval_step, state, eval_batches(dataset.test), data_sharding)
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
      "n_trainable_params": depth.count_trainable(variables["params"], labels),
      "n_params": int(sum(np.size(p) for p in jax.tree.leaves(variables["params"]))),
      "n_train": int(len(train_split.labels)), "image_size": config.image_size,
      "batch_size": config.batch_size, "devices": jax.device_count(),
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


# Settings that may change between an interruption and its resume: where files are, bars.
_RESUME_IGNORES = ("data_dir", "weights_dir", "progress")


def _comparable(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON would give it back (tuples become lists), minus `_RESUME_IGNORES`."""
  return {k: v for k, v in json.loads(config.to_json()).items() if k not in _RESUME_IGNORES}


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
           "config": _comparable(config), "tree": tree_signature(state)}
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

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
from tuning import (augment, auto_depth, bn_policy, datasets, depth, feature_cache,
                    input_pipeline, models, pretrained, schedule)
from tuning import phases as phases_lib
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
                   block_names: tuple[str, ...], steps_per_epoch: int, *, lr_mult: float = 1.0,
                   layer_decay: float | None = None, epochs: int | None = None,
                   curve: schedule.Curve = schedule.Curve()):
  """Each parameter's learning-rate multiplier (None: frozen) and the optimizer over them.

  Scratch runs train every layer at `scratch_lr`; pretrained ones at `lr`, the new
  head at `head_lr_mult` x, with the scheme's strategy (`llrd`: layer-wise decay;
  `l2sp`: pulled toward the pretrained weights, passed in as `params`). A phase
  (tuning/phases.py) scales the rates by `lr_mult`, may set its own `layer_decay`, and
  shapes them over its `epochs` by its `curve`, which `config.schedule` rules may override.
  `config.bn_policy = "train_stats_frozen_affine"` freezes BatchNorm scales and biases.
  """
  mults = schedule.multipliers(
      params, block_names, scheme.trainable_from,
      head_lr_mult=config.head_lr_mult if scheme.pretrained else 1.0,
      layer_decay=layer_decay or (config.layer_decay if scheme.name == "llrd" else None),
      bias_lr_mult=config.bias_lr_mult, rules=config.schedule)
  if config.bn_policy == bn_policy.TRAIN_STATS_FROZEN_AFFINE:
    mults = bn_policy.freeze_affine(params, mults)
  head = block_names[-1]
  anchor = {block: jax.tree.map(lambda _: None, tree) if block == head else tree
            for block, tree in params.items()}
  tx = schedule.make_optimizer(
      mults, curves=schedule.curves(params, config.schedule, curve), epochs=epochs,
      learning_rate=lr_mult * (config.lr if scheme.pretrained else config.scratch_lr),
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


def make_train_step(model, tx: optax.GradientTransformation, trainable_from: int,
                    start: int = 0, bn: str = bn_policy.TRAIN_ALL
                    ) -> Callable[[State, dict, jax.Array], tuple[State, dict]]:
  """The jittable `(state, batch, rng)` step; `start > 0`: batches hold what enters block
  `start` (cached features).

  `bn` is the BatchNorm policy: unless it updates statistics, the model may not
  change `batch_stats`, so trainable blocks normalise with their running averages.
  `rng` is an argument, not a constant of the program, so that runs differing only
  in their seed compile the same program (and hit the persistent compilation cache).
  """
  mutable = ["batch_stats"] if bn_policy.updates_stats(bn) else []
  def train_step(state: State, batch: dict, rng: jax.Array) -> tuple[State, dict]:
    dropout_rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      logits, updates = model.apply(
          model_variables({**state, "params": params}), batch["image"], train=True,
          trainable_from=trainable_from, start=start, mutable=mutable,
          rngs={"dropout": dropout_rng})
      return classification.loss(logits, batch["label"]), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    step_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {
        "step": state["step"] + 1,
        "params": optax.apply_updates(state["params"], step_updates),
        "batch_stats": updates.get("batch_stats", state["batch_stats"]),
        "opt_state": opt_state,
    }, {"loss": loss}
  return train_step


def make_eval_step(model, start: int = 0, multi_label: bool = False
                   ) -> Callable[[State, jax.Array], jax.Array]:
  def eval_step(state: State, images: jax.Array) -> jax.Array:
    logits = model.apply(model_variables(state), images, train=False, start=start)
    return classification.probabilities(logits, multi_label)
  return eval_step


def predict(eval_step, state: State, batches: Iterable[dict], sharding) -> tuple[np.ndarray, np.ndarray]:
  """Labels and class probabilities over a split, padding rows dropped."""
  probs, labels = [], []
  for batch in batches:
    out = np.asarray(eval_step(state, jax.device_put(batch["image"], sharding)))
    probs.append(out[batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(labels), np.concatenate(probs)


def predict_images(eval_step, state: State, config: ml_collections.ConfigDict, preprocess,
                   sharding, images: np.ndarray) -> np.ndarray:
  """Class probabilities of uint8 `images` (patches), resized and preprocessed as a split's."""
  split = medmnist.Split(images=images, labels=np.zeros(len(images), np.int32))
  return predict(eval_step, state, input_pipeline.eval_batches(
      split, batch_size=config.batch_size, image_size=config.image_size,
      preprocess=preprocess), sharding)[1]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one run, returns its result row (also appended to `workdir/results.jsonl`)."""
  config_lib.validate(config)
  if config.scheme in depth.SEARCHES:
    row = auto_depth.successive_halving(config, workdir, train_and_evaluate, run_identity)
    append_result(os.path.join(workdir, "results.jsonl"), row)
    return row
  start = time.perf_counter()
  dataset = datasets.from_config(config)
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
  model, variables, preprocess, _ = create_model(config, dataset.num_classes, init_rng)
  block_names = type(model).block_names

  steps = input_pipeline.steps_per_epoch(len(train_split.labels), config.batch_size)
  phases = phases_lib.plan(config, config.scheme, block_names)
  optimizers = [make_optimizer(config, p.scheme, variables["params"], block_names, steps,
                               lr_mult=p.lr_mult, layer_decay=p.layer_decay, epochs=p.epochs,
                               curve=p.curve) for p in phases]
  searching = config.scheme == "auto"
  # `reestimate` (tuning/bn_policy.py): BatchNorm statistics recomputed on the training
  # images, every block's before training (so before the frozen ones' features are
  # cached), the trained blocks' before each evaluation.
  reestimate = config.bn_policy == bn_policy.REESTIMATE and "batch_stats" in variables
  bn_rng = jax.random.split(dropout_rng)[1]
  real_rows = lambda batches: (batch["image"][batch["mask"]] for batch in batches)
  train_images = lambda: real_rows(input_pipeline.eval_batches(
      train_split, batch_size=config.batch_size, image_size=config.image_size,
      preprocess=preprocess))
  if reestimate:
    variables = {**variables, "batch_stats": bn_policy.reestimate(
        jax.jit(bn_policy.make_moments(model)), variables, train_images(),
        jax.random.fold_in(bn_rng, 0))}

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def state_at(epoch: int) -> State:
    """The state's tree after `epoch`: it holds the optimizer of that epoch's phase."""
    tx = optimizers[phases_lib.phase_of(phases, epoch)][1]
    return jax.device_put(create_train_state(variables, tx), replicated)

  name = run_name(config)
  splits = {"train": train_split, "val": dataset.val, "test": dataset.test}
  cache_s = None

  def enter(index: int, state: State) -> dict:
    """Phase `index`'s jitted steps and, where its frozen blocks allow, its feature cache."""
    nonlocal cache_s
    phase = phases[index]
    # With a cache, blocks below `start` run once per image, into `features`, and the
    # steps start above them; without, every step runs every block. Blocks below the
    # boundary were frozen in every earlier phase too, so `state` holds their initial values.
    start_block = phase.trainable_from if feature_cache.applies(config, phase.scheme) else 0
    features = None
    if start_block:
      cache_start = time.perf_counter()
      trunk = jax.jit(functools.partial(model.apply, train=False, stop=start_block))
      frozen = model_variables(state)
      features = feature_cache.build(
          lambda images: trunk(frozen, images), splits, batch_size=config.batch_size,
          image_size=config.image_size, preprocess=preprocess, sharding=data_sharding,
          directory=workdir, progress=config.progress, desc=f"{name} features")
      cache_s = round((cache_s or 0.0) + time.perf_counter() - cache_start, 2)
    return {"start": start_block, "features": features, "train_step": jax.jit(
        make_train_step(model, optimizers[index][1], phase.trainable_from,
                        start=start_block, bn=config.bn_policy), donate_argnums=0),
            "trained_moments": jax.jit(bn_policy.make_moments(
                model, trainable_from=phase.trainable_from, start=start_block)),
            "eval_step": jax.jit(make_eval_step(model, start=start_block,
                                                multi_label=dataset.train.multi_label))}

  def eval_batches(run: dict, split: str):
    if run["start"]:
      return input_pipeline.feature_eval_batches(
          run["features"][split], splits[split].labels, batch_size=config.batch_size)
    return input_pipeline.eval_batches(splits[split], batch_size=config.batch_size,
                                       image_size=config.image_size, preprocess=preprocess)

  def train_batches(run: dict, start_epoch: int):
    if run["start"]:
      return iter(input_pipeline.feature_train_batches(
          run["features"]["train"], train_split.labels, batch_size=config.batch_size,
          seed=config.seed, start_epoch=start_epoch))
    return iter(input_pipeline.train_batches(
        train_split, batch_size=config.batch_size, image_size=config.image_size,
        preprocess=preprocess, seed=config.seed, start_epoch=start_epoch, augment=augmentation))

  # `auto` keeps every best checkpoint: the depth it picks need not hold the best AUC.
  latest, best = (ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints", name, kind)),
      options=ocp.CheckpointManagerOptions(max_to_keep=None if searching and kind == "best" else 1,
                                           create=True)) for kind in ("latest", "best"))
  state, progress = resume(latest, state_at(0), config, state_at=state_at)
  resumed_at = progress["epoch"]
  holds = phases_lib.phase_of(phases, progress["epoch"])  # whose optimizer `state` holds
  run, running = None, None  # the steps and cache of phase `running`
  total = sum(p.epochs for p in phases)
  for epoch in range(progress["epoch"] + 1, total + 1):
    index = phases_lib.phase_of(phases, epoch)
    if progress["epoch"] - max(progress["best_epoch"], phases_lib.first_epoch(phases, index) - 1
                               ) >= config.patience:
      continue  # the phase stopped early (maybe before an interruption): on to the next
    if index != holds:  # a new phase: its boundary, its optimizer
      if searching:
        if not phases_lib.auto_choice(config, phases_lib.phase_bests(progress),
                                      splits["val"].labels)[1]:
          break  # deeper did not help enough
        # Warm start: the depth above's best weights (the best so far, as it gained).
        restored = best.restore(progress["best_epoch"], args=ocp.args.StandardRestore(
            state_at(progress["best_epoch"])))
        state = {**state, "params": restored["params"], "batch_stats": restored["batch_stats"]}
      state = {**state, "opt_state": optimizers[index][1].init(state["params"])}
      if bn_policy.updates_stats(config.bn_policy) and state["batch_stats"]:
        # The blocks it unfreezes start from the target's statistics (bn_policy.restart_unfrozen).
        boundary = phases[index].trainable_from
        state = {**state, "batch_stats": jax.device_put(bn_policy.restart_unfrozen(
            jax.jit(bn_policy.make_moments(model, trainable_from=boundary)),
            model_variables(state), train_images(), jax.random.fold_in(bn_rng, total + index),
            block_names, boundary=boundary, previous=phases[holds].trainable_from), replicated)}
      holds = index
    if index != running:
      run, running = enter(index, state), index
      batches = train_batches(run, epoch - 1)
    losses = []
    bar = tqdm(range(steps), desc=f"{name} epoch {epoch}/{total}", leave=False,
               disable=not config.progress)
    for _ in bar:
      state, metrics = run["train_step"](state, jax.device_put(next(batches), data_sharding),
                                         dropout_rng)
      losses.append(metrics["loss"])
      if len(losses) > 1:  # waiting on the previous step keeps one step in flight
        bar.set_postfix(loss=f"{float(losses[-2]):.4f}", refresh=False)
    train_loss = float(np.mean(losses))
    if not np.isfinite(train_loss):  # diverged: keep the last good checkpoints, record it
      progress["diverged_at_epoch"] = epoch
      break
    if reestimate:
      state = {**state, "batch_stats": jax.device_put(bn_policy.reestimate(
          run["trained_moments"], model_variables(state), real_rows(eval_batches(run, "train")),
          jax.random.fold_in(bn_rng, epoch)), replicated)}
    val_labels, val_probs = predict(run["eval_step"], state, eval_batches(run, "val"), data_sharding)
    val = classification.evaluate(val_labels, val_probs)
    progress["history"].append({"epoch": epoch, "train_loss": train_loss, "val_auc": val["auc"],
                                **({"phase": index} if len(phases) > 1 else {})})
    if searching and not dataset.train.multi_label and val_probs.shape[1] == 2 and all(
        val["auc"] > h["val_auc"] for h in progress["history"][:-1] if h.get("phase") == index):
      progress.setdefault("val_scores", {})[str(index)] = val_probs[:, 1].tolist()  # for DeLong
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
  final, auto = len(phases) - 1, {}  # the phase whose boundary the tested model trained at
  if searching and best_epoch:
    bests = phases_lib.phase_bests(progress)
    final = phases_lib.auto_choice(config, bests, splits["val"].labels)[0]
    best_epoch = bests[final]["epoch"]
    auto = auto_depth.evidence(config, model, variables, phases, final, history,
                               len(train_split.labels), workdir)
  val = test = task = {}  # diverged before any epoch finished
  predictions = None
  if best_epoch:
    if run is None:  # resumed after the last epoch: evaluate in the last phase's setup
      run = enter(phases_lib.phase_of(phases, progress["epoch"]), state)
    state = best.restore(best_epoch, args=ocp.args.StandardRestore(state_at(best_epoch)))
    # Recomputed from the restored checkpoint: the row proves the model tested is the best one.
    val = classification.evaluate(*predict(run["eval_step"], state, eval_batches(run, "val"),
                                           data_sharding))
    test_labels, test_probs = predict(run["eval_step"], state, eval_batches(run, "test"),
                                      data_sharding)
    test = classification.evaluate(test_labels, test_probs)
    arrays = {}
    if isinstance(dataset, datasets.PatchDataset):  # detection/segmentation: whole test images
      # The run's steps may start above cached features; new patches need the whole model.
      whole = jax.jit(make_eval_step(model)) if run["start"] else run["eval_step"]
      task, arrays = dataset.evaluate(test_probs, functools.partial(
          predict_images, whole, state, config, preprocess, data_sharding))
    predictions = save_predictions(workdir, name, test_labels, test_probs, **arrays)
  latest.close()
  best.close()

  result = {
      "dataset": config.dataset, "arch": config.arch, "scheme": config.scheme,
      "train_fraction": config.train_fraction, "seed": config.seed,
      "test_auc": test.get("auc"), "test_acc": test.get("acc"), "val_auc": val.get("auc"),
      **{f"test_{k}": test.get(k) for k in classification.SENSITIVITY_KEYS},
      "test_label_aucs": test.get("label_aucs"),  # multi-label: per label, None if undefined
      **task, "predictions": predictions,
      "best_epoch": best_epoch, "epochs_run": len(history),
      "wall_s": round(time.perf_counter() - start, 2), "resumed_at_epoch": resumed_at,
      "diverged_at_epoch": progress.get("diverged_at_epoch"),
      "n_trainable_params": schedule.count_trainable(variables["params"], optimizers[final][0]),
      "n_params": int(sum(np.size(p) for p in jax.tree.leaves(variables["params"]))),
      "n_train": int(len(train_split.labels)), "image_size": config.image_size,
      "batch_size": config.batch_size, "devices": jax.device_count(),
      "feature_cache": cache_s is not None, "feature_cache_s": cache_s,
      "phases": phases_lib.describe(phases, block_names, history), **auto,
      "weights": pretrained.source(config), "data_sha256": dataset.sha256, "history": history,
      "config": json.loads(config.to_json()), "versions": versions(),
  }
  append_result(os.path.join(workdir, "results.jsonl"), result)
  return result


def save_predictions(workdir: str, name: str, labels: np.ndarray, probs: np.ndarray,
                     **arrays: np.ndarray) -> str:
  """Writes the test split's labels and probabilities (for ROC curves and DeLong tests in
  the report) and a patch task's `arrays` (FROC curve, boundary errors); returns the path
  relative to `workdir`."""
  relative = os.path.join("predictions", f"{name}.npz")
  path = os.path.join(workdir, relative)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, labels=labels, probs=probs, **arrays)
  os.replace(path + ".tmp", path)
  return relative


def versions() -> dict[str, str]:
  """What produced a result: Python and the packages whose changes can move the numbers."""
  packages = ("tuning", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
  return {"python": platform.python_version(),
          **{p: importlib.metadata.version(p) for p in packages}}


# Settings that do not change what a run computes: where files are, bars, and the sweep's
# grid axes (a run is one point of them; its own scheme, fraction and seed do count).
_NOT_IDENTITY = ("data_dir", "weights_dir", "progress", "schemes", "train_fractions", "seeds",
                 "archs")


def run_identity(config: ml_collections.ConfigDict | dict) -> dict:
  """What makes two runs the same run: the config as JSON gives it back (tuples become
  lists), minus `_NOT_IDENTITY`. A dict is taken as such JSON (a result row's config)."""
  as_json = config if isinstance(config, dict) else json.loads(config.to_json())
  return {k: v for k, v in as_json.items() if k not in _NOT_IDENTITY}


def tree_signature(tree: Any) -> dict[str, str]:
  """`{leaf path: "shape dtype"}`, to tell a checkpoint of another model by name."""
  return {jax.tree_util.keystr(path): f"{np.shape(leaf)} {jnp.result_type(leaf)}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def resume(latest: ocp.CheckpointManager, state: State, config: ml_collections.ConfigDict,
           state_at: Callable[[int], State] | None = None) -> tuple[State, dict]:
  """The run's state and progress from its last epoch checkpoint, or a fresh start.

  Progress is the epoch, the early-stopping record and the history; with the
  state (params, batch_stats, optimizer state, step, from which the dropout RNG
  and the data position follow) a resumed run continues bit-identically. A
  checkpoint from a different config or model is refused, naming what differs.
  `state_at(epoch)` is the state's tree after `epoch` where it depends on the
  epoch (a phased run's optimizer: tuning/phases.py); else `state` is.
  """
  fresh = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "history": [],
           "config": run_identity(config), "tree": tree_signature(state)}
  step = latest.latest_step()
  if step is None:
    return state, fresh
  directory = latest.directory / str(step)
  saved = latest.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
  if state_at:
    state = state_at(saved["epoch"])
    fresh["tree"] = tree_signature(state)
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

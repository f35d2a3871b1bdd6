"""Kandel & Castelli 2020: block-wise fine-tuning of VGG16, VGG19 or InceptionV3 on
PatchCamelyon histopathology patches (96 px, 2 classes).

  tuning sweep --config configs/kandel2020/pcam.py:vgg16 --workdir runs/kandel_vgg16
  tuning sweep --config configs/kandel2020/pcam.py:inception_v3 --workdir runs/kandel_inception

Data: tensorflow-datasets `patch_camelyon` (7.48 GiB), prepared once with
`tfds build patch_camelyon --file_format=array_record` and read lazily here
(`config.dataset = "tfds:patch_camelyon"`). Weights: the Keras ImageNet files, downloaded
by name on first use (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`, ...).

Every training setting below is an ASSUMPTION (REFERENCE.md 1B: the paper's optimizer,
learning rate, epochs and block boundaries are not yet read from its full text): SGD
momentum 0.9, lr 1e-4 with the head at 10x, 10 epochs with patience 3, 10 % of the training
split per seed (26,214 patches), scratch at lr 0.01; blocks are Keras's (VGG block1..block5
+ fc6, fc7; InceptionV3 stem + mixed0..mixed10).

Not run here: needs the 7.48 GiB download and a GPU.
"""
from tuning.config import defaults

# arch -> (weights file, schemes from scratch through shallow to deep tuning)
_STUDY = {
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
              ("scratch", "head", "from:fc6", "from:block5", "from:block4", "from:block3",
               "from:block2", "all")),
    "vgg19": ("vgg19_weights_tf_dim_ordering_tf_kernels.h5",
              ("scratch", "head", "from:fc6", "from:block5", "from:block4", "from:block3",
               "from:block2", "all")),
    "inception_v3": ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                     ("scratch", "head", "from:mixed9", "from:mixed7", "from:mixed5",
                      "from:mixed2", "from:mixed0", "all")),
}


def get_config(arch: str = "vgg16"):
  if arch not in _STUDY:
    raise ValueError(f"configs/kandel2020/pcam.py:{arch}: expected one of {sorted(_STUDY)}")
  config = defaults()
  config.dataset = "tfds:patch_camelyon"
  config.arch = arch
  config.weights, config.schemes = _STUDY[arch]
  config.weights_format = "keras"
  config.train_fractions = (0.1,)
  config.seeds = (0, 1, 2)
  config.image_size = 96 if arch != "inception_v3" else 139  # InceptionV3 needs >= 75 px
  config.batch_size = 64
  config.epochs = 10
  config.patience = 3
  config.lr = 1e-4
  config.scratch_lr = 0.01
  return config

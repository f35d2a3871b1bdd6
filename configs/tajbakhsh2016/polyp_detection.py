"""Tajbakhsh et al. 2016's polyp detection (REFERENCE.md 1A, application 1), on your data.

Layer-wise fine-tuning of AlexNet, `FT:only fc8` ... `FT:conv1-fc8`, against training from
scratch, scored by FROC (sensitivity against false positives per frame), at 100/50/25 %
of the training data, three seeds. The colonoscopy videos and the handcrafted candidate
generator are not public: bring them as one `.npz` file (format in
tuning/datasets/detection.py: `images`, `lesions`, `candidates`, `split`) and name it:

  tuning sweep --config configs/tajbakhsh2016/polyp_detection.py \
      --config.dataset=detection:/path/to/polyps.npz --workdir runs/polyps

As the paper: every candidate box at 3 scales (x1.0, 1.2, 1.5), shifted by -10/0/+10 % of
its size vertically and horizontally, in 8 orientations (216 patches), classes balanced
by down-sampling (the paper's stratified patch set), and at test time a candidate's
probability is the mean over its patches; Table II's learning parameters (SGD, momentum
0.9, lr 0.001 on tuned layers, 0.01 on the new fc8, scratch 0.001, biases 2x, x0.95 per
epoch), early stopping on validation AUC (here over patches), 227 px inputs.

Assumptions (labelled): torchvision's AlexNet stands in for BVLC Caffe AlexNet (as in
pneumonia_alexnet.py); the paper states no polyp operating point, so sensitivity is
reported at 0.01, 0.1 and 1 false positives per frame (inside its plotted 1e-4..10) beside
the CPM; patches are kept at 64 px and resized to 227 per batch, since every candidate's
216 patches are held in memory (2.6 MB per candidate at 64 px); the training fraction
subsamples training patches, where the paper removed whole videos (put the videos you keep
in the file's `split` to reproduce that); 30 epochs with patience 5.
"""
from tuning import protocols


def get_config():
  config = protocols.tajbakhsh2016()
  config.dataset = "detection:polyps.npz"  # bring your own: --config.dataset=detection:PATH
  config.train_fractions = (1.0, 0.5, 0.25)
  config.seeds = (0, 1, 2)
  config.patch_size = 64
  config.detection_scales = (1.0, 1.2, 1.5)
  config.detection_shifts = (-0.1, 0.0, 0.1)
  config.detection_flips = True
  config.froc_fp_rates = (0.01, 0.1, 1.0)
  config.balance = True
  return config

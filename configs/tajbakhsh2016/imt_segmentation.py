"""Tajbakhsh et al. 2016's intima-media segmentation (REFERENCE.md 1A, application 4), your data.

Layer-wise fine-tuning of AlexNet, `FT:only fc8` ... `FT:conv1-fc8`, against training from
scratch, as a 3-class pixel classifier (background, lumen-intima, media-adventitia),
scored by the mean distance in µm between traced and expert interfaces (the paper's Fig. 9
box plots: deep tuning about 25 µm lumen-intima, 31 µm media-adventitia). The carotid
ultrasound ROIs are not public: bring them as one `.npz` file (format in
tuning/datasets/segmentation.py: `images`, `boundaries` (N, 2, W), `pixel_size_um`,
`split`) and name it:

  tuning sweep --config configs/tajbakhsh2016/imt_segmentation.py \
      --config.dataset=segmentation:/path/to/cimt.npz --workdir runs/cimt

As the paper: training patches centered on every interface pixel and as many random
background pixels (its stratified patch set), grayscale repeated to 3 channels, no
augmentation; at test time every pixel is classified from its patch and each interface
is the row of highest confidence per column; Table II's learning parameters (SGD,
momentum 0.9, lr 0.001 on tuned layers, 0.01 on the new fc8, scratch 0.001, biases 2x,
x0.95 per epoch); early stopping on validation AUC (here over patches); 227 px inputs.

Assumptions (labelled): torchvision's AlexNet stands in for BVLC Caffe AlexNet (as in
pneumonia_alexnet.py); the paper's patch size is not in REFERENCE.md, 32 px here (resized
to 227); the two open snakes the paper fits to the per-column maxima are left out, a
5-column median filter stands in for their smoothing; the training fraction subsamples
training patches (the paper reduced subjects: put them in the file's `split`); one seed
and the full training set, as the paper found no drop down to a single patient;
30 epochs with patience 5.
"""
from tuning import protocols


def get_config():
  config = protocols.tajbakhsh2016()
  config.dataset = "segmentation:cimt.npz"  # bring your own: --config.dataset=segmentation:PATH
  config.patch_size = 32
  config.boundary_smooth = 5
  return config

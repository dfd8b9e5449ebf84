"""Training Click-Pose on COCO-format keypoint data: matching, losses, denoising queries, the
simulated-annotator feedback rounds, data loading and the training loop behind `clickpose train`."""

"""Label Studio ML backend for Click-Pose (the adapter over `clickpose_core`; no model code here)."""

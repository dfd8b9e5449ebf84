"""Click-Pose for CVAT: a cvat-sdk auto-annotation function and a nuclio serverless handler.

Like `backend/` (the Label Studio adapter) this is a thin layer over `clickpose_core`; it imports
nothing of `backend/`. `function` needs the `cvat` extra (cvat-sdk); `nuclio` and `skeleton` do not.
"""

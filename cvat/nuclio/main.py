"""Nuclio entry point (`handler: main:handler`) of the Click-Pose CVAT function.

deploy.sh copies clickpose_core/, clickpose_cvat/ and the weights beside this file; nuclio imports
it from that folder, so the packages import as siblings. The code lives in clickpose_cvat.nuclio.
"""
import os

from clickpose_cvat import nuclio as clickpose_nuclio

HERE = os.path.dirname(os.path.abspath(__file__))


def init_context(context):
    clickpose_nuclio.init_context(context, weights_dir=os.path.join(HERE, "weights"))


handler = clickpose_nuclio.handler

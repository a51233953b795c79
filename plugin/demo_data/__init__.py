"""Seeded synthetic datasets in COCO, ADE20K and KITTI mono-3D formats, which the demo and the tests make
themselves. Nothing here is registered: mmdet's, mmseg's and mmdet3d's own datasets read the files."""
from .synthetic import make_demo_data

__all__ = ['make_demo_data']

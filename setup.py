from setuptools import find_packages, setup

setup(
    name='effidense',
    version='0.1.0',
    description='Sparse and efficient vision transformer backbones for OpenMMLab '
    'dense prediction: SparseViT, EfficientFormer, DynamicViT.',
    packages=find_packages(include=['plugin', 'plugin.*']),
    python_requires='>=3.10',
    install_requires=['torch', 'mmengine>=0.10', 'mmcv>=2.0', 'timm'],
    extras_require={'det': ['mmdet>=3.0'], 'seg': ['mmsegmentation>=1.0']},
)

"""robustmix: frequency-aware mixing (Robustmix, arXiv 2304.02847) for robust image classifiers.

The mixing core imports torch and numpy only::

    from robustmix import RobustMix
    mixer = RobustMix(num_classes=10, seed=0)
    images, soft_targets = mixer(images, targets)
"""

from robustmix import freq, functional, params
from robustmix.functional import cutmix, mixup, one_hot, robustmix
from robustmix.transforms import CutMix, MixCollate, MixUp, RobustMix, build_mixer

__version__ = "0.1.0"

__all__ = [
    "CutMix",
    "MixCollate",
    "MixUp",
    "RobustMix",
    "__version__",
    "build_mixer",
    "cutmix",
    "freq",
    "functional",
    "mixup",
    "one_hot",
    "params",
    "robustmix",
]

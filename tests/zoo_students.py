"""Student factories for tests/test_zoo.py, named as ``--student zoo_students:NAME``."""

from torch import nn


def classifier():
    """A classifier: its last Linear gives the 10 classes, so it is cut off and the heads see its 32 features."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))


def backbone():
    """A backbone: 24 features and no Linear producing 10."""
    return nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def declared():
    """Declares its feature width, so it is used as is (even though 10 columns look like logits)."""
    net = nn.Sequential(nn.Conv2d(3, 10, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 10))
    net.feature_dim = 10
    return net


not_a_factory = 3


def not_a_module():
    return "resnet"

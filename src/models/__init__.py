"""Networks (one general ConvNet builder) and the Classifier LightningModule that trains them."""

from src.models.classifier import Classifier
from src.models.convnet import ConvNet

__all__ = ["Classifier", "ConvNet"]

"""histomlf: MLflow-tracked CNN experiments for IDC detection in breast histopathology."""

__version__ = "0.1.0"

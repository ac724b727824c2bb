"""receiver: the durable callback receiver for Huawei Cloud Message & SMS."""

__version__ = "0.1.0"

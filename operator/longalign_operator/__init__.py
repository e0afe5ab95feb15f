"""longalign-operator: runs the LongAlign recipe on Kubernetes from one LongAlignRun resource."""

from importlib.metadata import version

__version__ = version("longalign-operator")

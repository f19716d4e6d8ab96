"""emsim: simulated HRTEM domains and transfer learning for segmentation U-Nets."""

__version__ = "0.1.0"

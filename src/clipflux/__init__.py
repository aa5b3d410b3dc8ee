"""clipflux: reproducible continual multimodal pretraining of CLIP models.

Importing this package only defines things: no seeding, no observers, no threads.
"""

__version__ = "0.1.0"

"""clipflux: reproducible continual multimodal pretraining of CLIP models.

Importing this package only defines things: no seeding, no observers, no threads. It hides two deprecation
warnings that dependencies raise on import and a user cannot act on (Sacred's `pkg_resources`, fvcore's
`torch.jit.script`), so that a stage's log says only what clipflux does.
"""

import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

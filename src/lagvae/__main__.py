"""`python -m lagvae`, and so `torchrun --nproc_per_node=N -m lagvae train ...`."""

import sys

from lagvae.cli import main

sys.exit(main())

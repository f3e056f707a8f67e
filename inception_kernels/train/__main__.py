"""``python -m inception_kernels.train [flags]`` = ``inception-kernels train [flags]`` (also under torchrun)."""

import sys

from .cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())

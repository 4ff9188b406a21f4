"""`python -m cifarbench.train`: trains one run (or a sweep with -m); the code is in cifarbench.cli.train."""

from cifarbench.cli.train import main

if __name__ == "__main__":
    main()

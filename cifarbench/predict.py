"""`python -m cifarbench.predict checkpoint=<best.pt> inputs=<folder>`; the code is in cifarbench.cli.predict."""

from cifarbench.cli.predict import main

if __name__ == "__main__":
    main()

"""`python -m cifarbench.evaluate checkpoint=<best.pt>`; the code is in cifarbench.cli.evaluate."""

from cifarbench.cli.evaluate import main

if __name__ == "__main__":
    main()

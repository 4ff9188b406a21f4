"""`python -m cifarbench.export checkpoint=<best.pt> format=onnx`; the code is in cifarbench.cli.export."""

from cifarbench.cli.export import main

if __name__ == "__main__":
    main()

"""Training losses, one module per loss (`conf/loss/<name>.yaml` names the class); the interface is in base."""
